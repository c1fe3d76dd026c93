"""The batched streaming flow of DESIGN.md, written once for every protocol over a folder.

A :class:`BatchedProtocol` runs over a pod's :class:`~fedloom.datasources.FileSource` and owns
the whole conversation on both sides; a subclass supplies only its computation:

- modeller side: :meth:`~BatchedProtocol.setup_values` (the initial setup step's body and
  tensors) and :meth:`~BatchedProtocol.collector` (what to do with each pod's per-batch and
  final messages, and the task's result);
- worker side: :meth:`~BatchedProtocol.initial_setup` (once, with the modeller's setup
  values, before the first batch; returns the run's state), :meth:`~BatchedProtocol.process_batch`
  (one batch of loaded files → a :class:`BatchOutput`) and :meth:`~BatchedProtocol.final_reduce`
  (once, after every batch and the resilience phase, over every batch's value).

The worker side follows DESIGN.md's message flow: choose the files (all, or with
``run_on_new_data_only`` those not processed by this task definition since they were last
modified, plus with ``force_rerun_failed_files`` the ones it failed on; no file at all in a
run on every file is ``NO_DATA``; nothing new completes the task with 0 files: NUM_BATCHES 0,
TASK_START (ready), the modeller's TASK_START and MODEL_PARAMETERS, BATCHES_COMPLETE
("TASK_COMPLETE") with :data:`NO_NEW_DATA` true, or with ``fail_on_no_new_data`` aborts it
with ``NO_NEW_DATA``);
NUM_BATCHES -1, CURRENT_BATCH_ID 1, TASK_START (ready); the modeller's TASK_START, then its
MODEL_PARAMETERS (setup); per batch: load (an unreadable file is a file-level failure),
process, record, EVALUATION_RESULTS (a failed batch is recorded and the task goes on, unless
``resilience`` is off or ``max_consecutive_batch_failures`` batches failed in a row;
``test_run`` stops after batch 1); BATCHES_COMPLETE("BATCHES_ONLY"); resilience: each file of
a failed batch, and each file that failed on its own, retried alone (success: a batch-level
problem; failure: a file-level one); RESILIENCE_END; failed files recorded; the final reduce
step (no file processed at all: ``TooManyFailuresError`` with the first file's failure);
BATCHES_COMPLETE("TASK_COMPLETE") with its body; the modeller's TASK_COMPLETE.

The modeller side waits for every accepted pod to be ready, sends TASK_START and the setup
values, feeds each pod's messages to the collector as they arrive, and leaves once every pod
said TASK_COMPLETE (or left the task). A pod whose message the collector rejects as malformed
is dropped from the task; the others go on. Both steps follow the task's request policy
(:class:`~fedloom.modeller.RequestPolicy`): the ready step (``"ready"``) like any request, the
stream (``"batches"``) with its time-out counted per pod as silence, so a pod that dies
mid-stream without a word (SIGKILL) is dropped, or stops the task, once it has been silent
that long (:meth:`~fedloom.transport.ModellerMailbox.collect_stream`).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic

import numpy as np

from fedloom.datasources import FileRecord, FileSource
from fedloom.errors import ConfigError
from fedloom.protocols import _batched_modeller as batched_modeller
from fedloom.protocols import _batched_worker as batched_worker
from fedloom.protocols._base import (
    ModellerContext,
    ReleaseGuard,
    TaskProtocol,
    WorkerContext,
    optional_timeout,
)
from fedloom.protocols._batched_parts import (
    BatchCollector,
    BatchOutput,
    BatchWorker,
    ResultT,
    SetupValues,
    StateT,
    ValueT,
)
from fedloom.protocols._ledger import Ledger
from fedloom.session import ModellerMailbox, WorkerMailbox
from fedloom.store import FailedFile, task_hash

DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_CONSECUTIVE_BATCH_FAILURES = 5
RUN_FLAGS = (
    "test_run",
    "run_on_new_data_only",
    "force_rerun_failed_files",
    "fail_on_no_new_data",
)
"""Config keys that change how a task runs, not what it computes: left out of its task hash."""


@dataclass(frozen=True, kw_only=True)
class BatchedProtocol(TaskProtocol[ResultT], Generic[StateT, ValueT, ResultT]):
    """Base of the protocols that run the batched streaming flow; see the module docstring.

    The batching settings are keyword-only fields, so a subclass's own fields come first.
    A subclass is a frozen dataclass with a ``name``; it lists these keys in its
    ``to_config`` (:meth:`batch_config`) and calls ``super().__post_init__()``.

    Raises:
        ConfigError: (at construction) a batching setting has the wrong type or range.
    """

    handles_start: ClassVar[bool] = True
    release_guard: ClassVar[ReleaseGuard] = ReleaseGuard.AT_RELEASE
    sends_file_names: ClassVar[bool] = True
    """True: file names may reach the modeller (inference's report rows carry them), so a
    task that processed nothing names its first failed file. False: they stay on the pod."""
    releases_per_batch: ClassVar[bool] = True
    """True: each batch's results leave the pod with it, so its files are recorded as
    processed with the batch (a crash keeps them). False: nothing leaves before the final
    reduce step, so the files are recorded once it was sent (a task that ends early, say
    under the privacy threshold, records none)."""

    batch_size: int = DEFAULT_BATCH_SIZE
    resilience: bool = True
    max_consecutive_batch_failures: int = DEFAULT_MAX_CONSECUTIVE_BATCH_FAILURES
    """End the task after this many failed batches in a row; -1: never (0 is invalid)."""
    test_run: bool = False
    run_on_new_data_only: bool = False
    force_rerun_failed_files: bool = False
    fail_on_no_new_data: bool = False
    """With ``run_on_new_data_only``: a pod with nothing new aborts the task with
    ``NO_NEW_DATA`` instead of completing it with 0 files."""
    timeout: float | None = None
    """Seconds each pod has to be ready, and may then stay silent while it streams its
    batches (each message restarts its timer); wins over the request policy's time-out.
    ``None``: the policy's (no policy: forever)."""

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int):
            raise ConfigError(f"{self.name}.batch_size must be an integer >= 1")
        if self.batch_size < 1:
            raise ConfigError(f"{self.name}.batch_size must be an integer >= 1")
        limit = self.max_consecutive_batch_failures
        if isinstance(limit, bool) or not isinstance(limit, int) or limit == 0 or limit < -1:
            raise ConfigError(
                f"{self.name}.max_consecutive_batch_failures must be -1 (unlimited) or >= 1"
            )
        for flag in ("resilience", *RUN_FLAGS):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"{self.name}.{flag} must be true or false")
        if self.force_rerun_failed_files and not self.resilience:
            raise ConfigError("force_rerun_failed_files needs resilience (single-file retries)")
        if self.fail_on_no_new_data and not self.run_on_new_data_only:
            raise ConfigError(
                f"{self.name}.fail_on_no_new_data needs run_on_new_data_only (only a run on new "
                "data can find nothing new)"
            )
        optional_timeout(f"{self.name}.timeout", self.timeout)

    def batch_config(self) -> dict[str, Any]:
        """The batching settings as config keys, for a subclass's ``to_config``."""
        return {
            "batch_size": self.batch_size,
            "resilience": self.resilience,
            "max_consecutive_batch_failures": self.max_consecutive_batch_failures,
            "test_run": self.test_run,
            "run_on_new_data_only": self.run_on_new_data_only,
            "force_rerun_failed_files": self.force_rerun_failed_files,
            "fail_on_no_new_data": self.fail_on_no_new_data,
            "timeout": self.timeout,
        }

    # --- what a subclass supplies --------------------------------------------------------

    def setup_values(self) -> SetupValues:
        """Modeller side: the initial setup step's body and tensors (default: empty)."""
        return SetupValues()

    @abstractmethod
    def collector(self, pods: Sequence[str]) -> BatchCollector[ResultT]:
        """Modeller side: a fresh collector for one task with these ready ``pods``."""

    def check_worker(self, context: WorkerContext) -> None:
        """Worker side, before anything is sent: refuse a pod that cannot run the task.

        Raises:
            FedloomError: the pod cannot run this task (the subclass's choice of error).
        """

    @abstractmethod
    async def initial_setup(
        self, body: dict[str, Any], tensors: Mapping[str, np.ndarray], worker: BatchWorker
    ) -> StateT:
        """Worker side, once before the first batch: the run's state, from the setup values.

        Raises:
            FedloomError: the setup values are unusable; the task ends.
        """

    @abstractmethod
    async def process_batch(
        self, state: StateT, loaded: list[tuple[FileRecord, Any]], batch_id: int
    ) -> BatchOutput[ValueT]:
        """Worker side: one batch of loaded files (never empty; retries have one file).

        Raises:
            DataError, ValueError, RuntimeError: the batch failed as a whole (resilience
                decides what happens); any other exception ends the task.
        """

    @abstractmethod
    async def final_reduce(
        self, state: StateT, values: list[ValueT], failed: Mapping[str, FailedFile]
    ) -> dict[str, Any]:
        """Worker side, once after the batches and the resilience phase.

        ``values`` are every batch's values in order (retries included); ``failed`` are the
        files that failed even alone. Returns the extra keys of BATCHES_COMPLETE
        ("TASK_COMPLETE"); report failures only as the protocol's privacy allows.

        Raises:
            FedloomError: the results must not be released (a privacy threshold, say).
        """

    # --- the flow, the same for every subclass (batched_modeller, batched_worker) ---------

    async def run_modeller(self, mailbox: ModellerMailbox, context: ModellerContext) -> ResultT:
        return await batched_modeller.run_modeller(self, mailbox, context)

    async def run_worker(self, mailbox: WorkerMailbox, context: WorkerContext) -> dict[str, Any]:
        return await batched_worker.run_worker(self, mailbox, context)

    def task_key(self, source: FileSource) -> str:
        """The key of this task definition on ``source``.

        The protocol and its config without the run flags and time-out, and the source's
        identity.
        """
        definition = {k: v for k, v in self.dump().items() if k != "config"}
        definition["config"] = {
            k: v for k, v in self.to_config().items() if k not in (*RUN_FLAGS, "timeout")
        }
        return task_hash(definition, source.identity())

    async def select_files(
        self, source: FileSource, ledger: Ledger, key: str
    ) -> Iterator[FileRecord]:
        """The files to process, streamed in listing order (see the module docstring)."""
        if not self.run_on_new_data_only and not self.force_rerun_failed_files:
            return source.files()
        processed = await ledger.processed_files(key)
        failed = {f.name for f in await ledger.failed_files(key)}

        def wanted(record: FileRecord) -> bool:
            if record.name in failed:
                return self.force_rerun_failed_files or not self.run_on_new_data_only
            if self.run_on_new_data_only:
                return processed.get(record.name) != record.mtime_ns
            return True

        return (record for record in source.files() if wanted(record))


def image_loader_options(source: FileSource) -> dict[str, Any] | None:
    """The options of ``source``'s ``image`` loader, or None when it uses another loader."""
    identity = source.identity()
    if identity.get("loader") != "image":
        return None
    return dict(identity.get("loader_options") or {})
