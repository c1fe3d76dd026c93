"""What the scheduler runs (:class:`SchedulableTask`) and the states it goes through.

How an out-of-memory failure is told apart from any other (:func:`is_out_of_memory`,
:func:`is_device_out_of_memory`) lives in :mod:`fedloom.errors`, so that a pod's task child
classifies its failures the same way; both are re-exported here."""

from __future__ import annotations

from enum import StrEnum
from typing import Protocol, runtime_checkable

from fedloom.errors import is_device_out_of_memory, is_out_of_memory
from fedloom.scheduler.resources import ResourceEstimate

__all__ = ["SchedulableTask", "TaskStatus", "is_device_out_of_memory", "is_out_of_memory"]


class TaskStatus(StrEnum):
    """Where a task is in its life in the :class:`~fedloom.scheduler.Scheduler`.

    INIT (submitted) → AVAILABLE (queued) → LOADING (system memory and CPUs reserved,
    ``load()`` runs) → WAITING (for room on a device) → TRAINING (device memory reserved,
    ``train(device)`` runs) → FINISHED. An out-of-memory error gives INTERRUPT, then
    AVAILABLE again with a raised estimate; other errors give EXCEPTION; a stop turns
    queued tasks into EXITED.
    """

    INIT = "INIT"
    AVAILABLE = "AVAILABLE"
    LOADING = "LOADING"
    WAITING = "WAITING"
    TRAINING = "TRAINING"
    FINISHED = "FINISHED"
    EXITED = "EXITED"
    EXCEPTION = "EXCEPTION"
    INTERRUPT = "INTERRUPT"


@runtime_checkable
class SchedulableTask(Protocol):
    """A unit of work the scheduler can admit: a virtual client's round, or any user task.

    Attributes:
        name: Shown in status callbacks and the report.
        group: Report file the task belongs to (for example the round).
        estimate: What the task expects to use; the scheduler raises its own copy after an
            out-of-memory error and never changes this attribute.

    Both steps may run again after an out-of-memory error, so they must be safe to repeat.
    """

    name: str
    group: str
    estimate: ResourceEstimate

    def load(self) -> None:
        """Read the task's data into system memory (``estimate.memory`` is reserved)."""
        ...

    def train(self, device: str) -> object:
        """Compute on ``device`` (``"cpu"`` or ``"cuda:<i>"``); the value goes in the report."""
        ...
