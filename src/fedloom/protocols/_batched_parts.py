"""The parts of a batched protocol: what its steps take and return, and the stream's stages.

A :class:`~fedloom.protocols._batched.BatchedProtocol` subclass returns a
:class:`SetupValues` and a :class:`BatchCollector` on the modeller's side, and gets a
:class:`BatchWorker` and returns a :class:`BatchOutput` per batch on the pod's. The stage
names and :data:`NO_NEW_DATA` are what both sides read in BATCHES_COMPLETE.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from fedloom.datasources import FileRecord, FileSource
from fedloom.errors import FedloomError
from fedloom.protocols._base import WorkerContext
from fedloom.protocols._ledger import Ledger

BATCHES_ONLY = "BATCHES_ONLY"
"""BATCHES_COMPLETE's stage once the batches are done (resilience and reduce may follow)."""
FINISHED = "TASK_COMPLETE"
"""BATCHES_COMPLETE's stage once the worker is done; its body carries the final reduce."""
NO_NEW_DATA = "no_new_data"
"""The key that says a pod had nothing new (``run_on_new_data_only``): True in its final
BATCHES_COMPLETE and its released record; the pods' names in a result's summary."""

StateT = TypeVar("StateT")
ValueT = TypeVar("ValueT")
ResultT = TypeVar("ResultT")


@dataclass(frozen=True)
class SetupValues:
    """The initial setup step's message (MODEL_PARAMETERS), sent once to every ready pod."""

    body: dict[str, Any] = field(default_factory=dict)
    tensors: Mapping[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchOutput(Generic[ValueT]):
    """What :meth:`BatchedProtocol.process_batch` made of one batch.

    Attributes:
        done: the files it processed. They count as succeeded, their earlier failures are
            cleared, and they are recorded as processed (with the batch, or at the end: see
            :attr:`BatchedProtocol.releases_per_batch`). A batch with no done file keeps no
            value and sends nothing.
        value: what :meth:`BatchedProtocol.final_reduce` gets for this batch.
        body: the EVALUATION_RESULTS body (the base adds ``"batch"``); None sends nothing.
        failed: files of the batch it could not use, by name: file-level failures.
        stop: end the task with this error once this batch is recorded and sent: no further
            batch, no resilience phase, no final reduce (a usage limit, say).
    """

    done: Sequence[FileRecord]
    value: ValueT
    body: dict[str, Any] | None = None
    failed: Mapping[str, BaseException] = field(default_factory=dict)
    stop: FedloomError | None = None


@dataclass(frozen=True)
class BatchWorker:
    """What a batched protocol's worker steps may use on the pod."""

    context: WorkerContext
    source: FileSource
    ledger: Ledger
    task_id: str
    task_key: str
    """This task definition's key in the pod's records of processed and failed files."""


class BatchCollector(ABC, Generic[ResultT]):
    """The modeller's side of one batched task: it folds each pod's messages into a result.

    Methods that read a pod's message raise :class:`~fedloom.errors.ProtocolError` (or
    ValueError/TypeError) on a malformed one, before they change anything; the pod is then
    dropped from the task.
    """

    @abstractmethod
    def on_batch(self, pod: str, body: dict[str, Any], tensors: Mapping[str, np.ndarray]) -> None:
        """One EVALUATION_RESULTS of ``pod`` (``body["batch"]`` is its batch id)."""

    @abstractmethod
    def on_finish(self, pod: str, body: dict[str, Any], tensors: Mapping[str, np.ndarray]) -> None:
        """``pod``'s BATCHES_COMPLETE("TASK_COMPLETE"), with its final reduce step's body."""

    def on_no_new_data(self, pod: str) -> None:
        """``pod`` had no file the task had not already processed (``run_on_new_data_only``).

        It completed with 0 files, sent no batch and no final reduce step, and stays among
        the active pods of :meth:`result`. Default: nothing to note.
        """

    @abstractmethod
    def result(self, active: Sequence[str], aborted: Mapping[str, str]) -> ResultT:
        """The task's result.

        ``active``: the pods still in the task; ``aborted``: each pod that left it, with
        why (``"REASON: message"``).

        Raises:
            PodResponseError: no pod delivered what the result needs (the protocol's choice).
        """
