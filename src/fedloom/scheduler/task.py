"""What the scheduler runs (:class:`SchedulableTask`), the states it goes through, and how
an out-of-memory failure is told apart from any other."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Protocol, runtime_checkable

from fedloom.scheduler.resources import ResourceEstimate

_OOM_PHRASES = ("out of memory", "not enough memory")
"""RuntimeError texts of allocators: CUDA/MPS ("CUDA out of memory. Tried to allocate
...") and torch's CPU allocator ("DefaultCPUAllocator: not enough memory: ...")."""


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


def _torch_oom_class() -> type[BaseException] | None:
    torch = sys.modules.get("torch")  # never import torch only to ask this
    cuda = getattr(torch, "cuda", None)
    found = getattr(cuda, "OutOfMemoryError", None)
    return found if isinstance(found, type) and issubclass(found, BaseException) else None


def _is_torch_oom(exc: BaseException) -> bool:
    torch_oom = _torch_oom_class()
    if torch_oom is not None and isinstance(exc, torch_oom):
        return True
    return any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__)


def _one_is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError) or _is_torch_oom(exc):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(phrase in text for phrase in _OOM_PHRASES)
    return False


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors it was explicitly raised from (``raise ... from``)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__
    return chain


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) means memory ran out.

    True for :class:`MemoryError`, ``torch.cuda.OutOfMemoryError``, and a RuntimeError
    whose message says "out of memory" or "not enough memory" (CUDA and CPU allocators).
    """
    return any(_one_is_out_of_memory(error) for error in _chain(exc))


def is_device_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error of a GPU rather than of system memory."""
    for error in _chain(exc):
        if _is_torch_oom(error):
            return True
        if isinstance(error, RuntimeError) and not isinstance(error, MemoryError):
            text = str(error).lower()
            if "cuda" in text and any(phrase in text for phrase in _OOM_PHRASES):
                return True
    return False
