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

import asyncio
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np

from fedloom.datasources import FileCount, FileRecord, FileSource
from fedloom.errors import (
    AbortReason,
    ConfigError,
    DataError,
    EmptyDatasetError,
    FedloomError,
    NoNewDataError,
    PodFailure,
    PodResponseError,
    ProtocolError,
    SchemaMismatchError,
    TooManyFailuresError,
)
from fedloom.hooks import BoundHooks, HookPoint
from fedloom.protocols.base import (
    ModellerContext,
    Protocol,
    ReleaseGuard,
    WorkerContext,
    optional_timeout,
)
from fedloom.protocols.ledger import Ledger, StoreLedger
from fedloom.store import FailedFile, task_hash
from fedloom.transport import ModellerMailbox, WorkerMailbox
from fedloom.wire import Message, MessageType

BATCHES_ONLY = "BATCHES_ONLY"
"""BATCHES_COMPLETE's stage once the batches are done (resilience and reduce may follow)."""
FINISHED = "TASK_COMPLETE"
"""BATCHES_COMPLETE's stage once the worker is done; its body carries the final reduce."""
READY_REQUEST = "ready"
"""The name of the ready step (each pod's TASK_START) in :attr:`TaskResult.timings`."""
BATCHES_REQUEST = "batches"
"""The name of the streamed batches (up to each pod's last BATCHES_COMPLETE) in timings."""
DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_CONSECUTIVE_BATCH_FAILURES = 5
RUN_FLAGS = (
    "test_run",
    "run_on_new_data_only",
    "force_rerun_failed_files",
    "fail_on_no_new_data",
)
"""Config keys that change how a task runs, not what it computes: left out of its task hash."""
BATCH_ERRORS: tuple[type[Exception], ...] = (DataError, ValueError, RuntimeError)
"""What a batch may fail with and the task go on (resilience); anything else ends the task."""
NO_NEW_DATA = "no_new_data"
"""The key that says a pod had nothing new (``run_on_new_data_only``): True in its final
BATCHES_COMPLETE and its released record; the pods' names in a result's summary."""
_MAX_REASON_CHARS = 500

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
        """``pod`` had no file the task had not already processed (``run_on_new_data_only``):
        it completed with 0 files, sent no batch and no final reduce step, and stays among
        the active pods of :meth:`result`. Default: nothing to note."""

    @abstractmethod
    def result(self, active: Sequence[str], aborted: Mapping[str, str]) -> ResultT:
        """The task's result. ``active``: the pods still in the task; ``aborted``: each pod
        that left it, with why (``"REASON: message"``).

        Raises:
            PodResponseError: no pod delivered what the result needs (the protocol's choice).
        """


@dataclass(frozen=True, kw_only=True)
class BatchedProtocol(Protocol, Generic[StateT, ValueT, ResultT]):
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

    # --- modeller ------------------------------------------------------------------------

    async def run_modeller(self, mailbox: ModellerMailbox, context: ModellerContext) -> ResultT:
        await mailbox.collect(MessageType.TASK_START, name=READY_REQUEST, timeout=self.timeout)
        if not mailbox.pods:
            raise PodResponseError(f"{self.name}: no pod is ready", _failures(mailbox))
        await mailbox.broadcast(MessageType.TASK_START)
        setup = self.setup_values()
        await mailbox.broadcast(MessageType.MODEL_PARAMETERS, setup.body, setup.tensors)
        collector = self.collector(list(mailbox.pods))
        # one request under the task's policy: a pod silent for longer than the time-out
        # (per pod: another pod's messages do not keep it alive) is dropped or stops the
        # task; a pod whose batches' results reached the modeller counts for min_replies
        # even if it leaves before its final reduce step
        async for message in mailbox.collect_stream(
            _is_final,
            usable=_is_batch if self.releases_per_batch else None,
            name=BATCHES_REQUEST,
            timeout=self.timeout,
        ):
            pod = message.sender
            body = message.body if isinstance(message.body, dict) else {}
            try:
                if message.type is MessageType.EVALUATION_RESULTS:
                    collector.on_batch(pod, body, message.tensors)
                elif _is_final(message) and body.get(NO_NEW_DATA) is True:
                    collector.on_no_new_data(pod)
                elif _is_final(message):
                    collector.on_finish(pod, body, message.tensors)
            except (ProtocolError, ValueError, TypeError) as exc:
                await mailbox.drop(
                    pod, AbortReason.WORKER_ERROR, f"malformed {message.type.value}: {exc}"
                )
        aborted = {pod: why.text for pod, why in _failures(mailbox).items()}
        return collector.result(list(mailbox.pods), aborted)

    # --- worker --------------------------------------------------------------------------

    async def run_worker(self, mailbox: WorkerMailbox, context: WorkerContext) -> dict[str, Any]:
        source = context.datasource
        if not isinstance(source, FileSource):
            raise SchemaMismatchError(
                f"the {self.name} protocol needs a folder-of-files dataset on the pod"
            )
        ledger: Ledger = context.ledger or StoreLedger(None)
        hooks = context.hooks.bind(mailbox, context.pod)
        await hooks.fire(HookPoint.INIT_START)
        worker = BatchWorker(context, source, ledger, mailbox.task_id, self.task_key(source))
        self.check_worker(context)
        records = await self.select_files(source, ledger, worker.task_key)
        first = next(records, None)
        if first is None:
            return await self._nothing_to_do(mailbox, hooks)
        count = source.count_in_background()
        await mailbox.send(MessageType.NUM_BATCHES, {"count": -1})
        await mailbox.send(MessageType.CURRENT_BATCH_ID, {"batch": 1})
        await mailbox.send(MessageType.TASK_START, {})
        await mailbox.receive(MessageType.TASK_START)
        setup = await mailbox.receive(MessageType.MODEL_PARAMETERS)
        body = setup.body if isinstance(setup.body, dict) else {}
        state = await self.initial_setup(body, setup.tensors, worker)
        await hooks.fire(HookPoint.INIT_END)
        await hooks.fire(HookPoint.RUN_START)
        run = BatchRun(self, worker, state, mailbox)
        await self._run_batches(
            run, source.batches(_chain(first, records), self.batch_size), count, hooks
        )
        await mailbox.send(MessageType.BATCHES_COMPLETE, {"stage": BATCHES_ONLY})
        if self.resilience and run.stop is None:
            await run.retry_failed()
        await hooks.fire(HookPoint.RESILIENCE_END, failed=len(run.failed))
        await ledger.record_failed(worker.task_key, list(run.failed.values()))
        if run.stop is not None:
            raise run.stop
        if run.succeeded == 0:
            raise TooManyFailuresError(self._nothing_processed(run.failed))
        if self.release_guard is ReleaseGuard.AT_RELEASE:
            worker.context.release(run.succeeded, "files")
        final = await self.final_reduce(state, run.values, dict(run.failed))
        await mailbox.send(MessageType.BATCHES_COMPLETE, {**final, "stage": FINISHED})
        if run.unrecorded:
            await ledger.record_processed(worker.task_key, run.unrecorded)
        await mailbox.receive(MessageType.TASK_COMPLETE)
        released = {"files": run.succeeded, "failed": len(run.failed), "batches": run.batch_id}
        await hooks.fire(HookPoint.RUN_END, released=released)
        return released

    async def _nothing_to_do(self, mailbox: WorkerMailbox, hooks: BoundHooks) -> dict[str, Any]:
        """No file was selected. With ``run_on_new_data_only`` nothing is new (an empty drop
        folder included): the task completes with 0 files (no batch, no final reduce step)
        unless ``fail_on_no_new_data`` asks for NO_NEW_DATA. Otherwise the folder is empty.

        Raises:
            EmptyDatasetError: a run on every file, and no file matches the dataset's pattern.
            NoNewDataError: nothing is new and ``fail_on_no_new_data`` is set.
        """
        if not self.run_on_new_data_only:
            raise EmptyDatasetError(
                "no file in the data folder matches the dataset's pattern (hidden files "
                "are skipped)"
            )
        if self.fail_on_no_new_data:
            raise NoNewDataError("no file that this task has not already processed")
        await mailbox.send(MessageType.NUM_BATCHES, {"count": 0})
        await mailbox.send(MessageType.TASK_START, {})
        await mailbox.receive(MessageType.TASK_START)
        await mailbox.receive(MessageType.MODEL_PARAMETERS)  # nothing to set up for
        await hooks.fire(HookPoint.INIT_END)
        await hooks.fire(HookPoint.RUN_START)
        await mailbox.send(MessageType.BATCHES_COMPLETE, {"stage": FINISHED, NO_NEW_DATA: True})
        await mailbox.receive(MessageType.TASK_COMPLETE)
        released = {"files": 0, "failed": 0, "batches": 0, NO_NEW_DATA: True}
        await hooks.fire(HookPoint.RUN_END, released=released)
        return released

    def _nothing_processed(self, failed: Mapping[str, FailedFile]) -> str:
        """Why the task ends when no file succeeded: the failure of the first failed file
        by name (the name left out for a protocol that keeps file names on the pod)."""
        text = "no batch and no file could be processed"
        if not failed:
            return text
        first = failed[min(failed)]
        if self.sends_file_names:
            return f"{text}; first failure: {first.name}: {first.reason}"
        reason = first.reason.replace(first.name, "<file>")
        return f"{text}; first failure (file names stay on the pod): {reason}"

    async def _run_batches(
        self,
        run: BatchRun[StateT, ValueT],
        batches: Iterator[list[FileRecord]],
        count: FileCount,
        hooks: BoundHooks,
    ) -> None:
        """Every batch in turn, with CURRENT_BATCH_ID before each and NUM_BATCHES once the
        count is known (from the background count, or at the end)."""
        announced = False
        for batch in batches:
            await run.batch(batch)
            await hooks.fire(HookPoint.BATCH_END, batch=run.batch_id, step=run.succeeded)
            # a selection (new data only) is not the folder the background count counted
            if not announced and count.done() and not self.run_on_new_data_only:
                total = math.ceil(count.result() / self.batch_size)
                await run.mailbox.send(MessageType.NUM_BATCHES, {"count": total})
                announced = True
            if self.test_run or run.stop is not None:
                break
            await run.mailbox.send(MessageType.CURRENT_BATCH_ID, {"batch": run.batch_id + 1})
        if not announced:  # the count is known now that the files were all listed
            await run.mailbox.send(MessageType.NUM_BATCHES, {"count": run.batch_id})

    def task_key(self, source: FileSource) -> str:
        """The key of this task definition on ``source``: the protocol and its config
        without the run flags and time-out, and the source's identity."""
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


class BatchRun(Generic[StateT, ValueT]):
    """The bookkeeping of one worker's pass over its batches.

    Attributes:
        batch_id: the id of the last batch started (1-based; retries keep the last id).
        succeeded: files processed so far.
        failed: name → why, for the files that failed and have not succeeded since.
        values: every batch's value, in order.
        stop: the error a batch asked to end the task with, if any.
        unrecorded: files done but not yet recorded as processed (``releases_per_batch``
            False), as (name, mtime_ns).
    """

    def __init__(
        self,
        protocol: BatchedProtocol[StateT, ValueT, Any],
        worker: BatchWorker,
        state: StateT,
        mailbox: WorkerMailbox,
    ) -> None:
        self.protocol = protocol
        self.worker = worker
        self.state = state
        self.mailbox = mailbox
        self.batch_id = 0
        self.succeeded = 0
        self.consecutive_failures = 0
        self.failed: dict[str, FailedFile] = {}
        self.values: list[ValueT] = []
        self.stop: FedloomError | None = None
        self.unrecorded: list[tuple[str, int]] = []
        self._failed_records: dict[str, FileRecord] = {}
        self._failed_batches: list[list[FileRecord]] = []

    async def batch(self, records: list[FileRecord]) -> None:
        """Process one batch; a failed batch is recorded and the run goes on, within limits.

        Raises:
            TooManyFailuresError: the batch failed and ``resilience`` is off, or it was the
                ``max_consecutive_batch_failures``-th failed batch in a row.
        """
        self.batch_id += 1
        try:
            await self._process(records)
            self.consecutive_failures = 0
        except BATCH_ERRORS as exc:
            self.consecutive_failures += 1
            self._failed_batches.append(records)
            for record in records:
                self._fail(record, exc, "batch")
            limit = self.protocol.max_consecutive_batch_failures
            if not self.protocol.resilience or (0 < limit <= self.consecutive_failures):
                raise TooManyFailuresError(
                    f"{self.consecutive_failures} batches failed in a row; last: {exc}"
                ) from exc

    async def retry_failed(self) -> None:
        """The resilience phase: each file of a failed batch, then each file that failed on
        its own, processed alone; a file that fails again is a file-level failure."""
        retry = [record for batch in self._failed_batches for record in batch]
        retry += [
            record
            for name, record in self._failed_records.items()
            if self.failed[name].level == "file"
        ]
        seen: set[str] = set()
        for record in retry:
            if record.name in seen or self.stop is not None:
                continue
            seen.add(record.name)
            try:
                await self._process([record])
            except BATCH_ERRORS as exc:
                self._fail(record, exc, "file")

    async def _process(self, records: list[FileRecord]) -> None:
        source = self.worker.source
        loaded, errors = await asyncio.to_thread(source.load_batch, records)
        by_name = {record.name: record for record in records}
        for name, error in errors.items():
            self._fail(by_name[name], error, "file")
        if not loaded:
            if errors:
                return  # every file of the batch failed on its own: file-level failures
            raise DataError("the batch is empty")
        output = await self.protocol.process_batch(self.state, loaded, self.batch_id)
        for name, problem in output.failed.items():
            if name in by_name:
                self._fail(by_name[name], problem, "file")
        done = list(output.done)
        if done:
            processed = [(record.name, record.mtime_ns) for record in done]
            if self.protocol.releases_per_batch:
                await self.worker.ledger.record_processed(self.worker.task_key, processed)
            else:
                self.unrecorded.extend(processed)
            for record in done:
                self.failed.pop(record.name, None)
                self._failed_records.pop(record.name, None)
            self.succeeded += len(done)
            self.values.append(output.value)
            if output.body is not None:
                body = {**output.body, "batch": self.batch_id}
                await self.mailbox.send(MessageType.EVALUATION_RESULTS, body)
        if output.stop is not None:
            self.stop = output.stop

    def _fail(self, record: FileRecord, error: BaseException, level: str) -> None:
        reason = str(error)[:_MAX_REASON_CHARS]
        self.failed[record.name] = FailedFile(
            record.name, reason, type(error).__name__, level, time.time()
        )
        self._failed_records[record.name] = record


def image_loader_options(source: FileSource) -> dict[str, Any] | None:
    """The options of ``source``'s ``image`` loader, or None when it uses another loader."""
    identity = source.identity()
    if identity.get("loader") != "image":
        return None
    return dict(identity.get("loader_options") or {})


def _is_batch(message: Message) -> bool:
    """A batch's results (EVALUATION_RESULTS), which left the pod with the batch."""
    return message.type is MessageType.EVALUATION_RESULTS


def _is_final(message: Message) -> bool:
    """A worker's last message of the stream: BATCHES_COMPLETE("TASK_COMPLETE")."""
    body = message.body if isinstance(message.body, dict) else {}
    return message.type is MessageType.BATCHES_COMPLETE and body.get("stage") == FINISHED


def _failures(mailbox: ModellerMailbox) -> dict[str, PodFailure]:
    return {pod: PodFailure.from_report(r) for pod, r in mailbox.aborted.items()}


def _chain(first: FileRecord, rest: Iterator[FileRecord]) -> Iterator[FileRecord]:
    yield first
    yield from rest
