"""The pod's side of the batched flow: choose the files, run the batches, retry, reduce.

See :mod:`fedloom.protocols._batched` for the flow. :class:`BatchRun` keeps one pass's
bookkeeping (batch ids, successes, failures, values, what is still to record in the
pod's ledger); the resilience phase retries the files of failed batches one by one.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Generic

from fedloom._hooks import BoundHooks, HookPoint
from fedloom.datasources import FileCount, FileRecord, FileSource
from fedloom.errors import (
    DataError,
    EmptyDatasetError,
    FedloomError,
    NoNewDataError,
    SchemaMismatchError,
    TooManyFailuresError,
)
from fedloom.protocols._base import ReleaseGuard, WorkerContext
from fedloom.protocols._batched_parts import (
    BATCHES_ONLY,
    FINISHED,
    NO_NEW_DATA,
    BatchWorker,
    StateT,
    ValueT,
)
from fedloom.protocols._ledger import Ledger, StoreLedger
from fedloom.session import WorkerMailbox
from fedloom.store import FailedFile
from fedloom.wire import MessageType

if TYPE_CHECKING:
    from fedloom.protocols._batched import BatchedProtocol

BATCH_ERRORS: tuple[type[Exception], ...] = (DataError, ValueError, RuntimeError)
"""What a batch may fail with and the task go on (resilience); anything else ends the task."""
_MAX_REASON_CHARS = 500


async def run_worker(
    protocol: BatchedProtocol[Any, Any, Any], mailbox: WorkerMailbox, context: WorkerContext
) -> dict[str, Any]:
    """The pod's side of ``protocol``'s task; what it released.

    Raises:
        SchemaMismatchError: the pod's dataset is not a folder of files.
        EmptyDatasetError, NoNewDataError: no file was selected (see :func:`_nothing_to_do`).
        TooManyFailuresError: too many batches failed, or no file could be processed.
        FedloomError: a step of the protocol ended the task.
    """
    source = context.datasource
    if not isinstance(source, FileSource):
        raise SchemaMismatchError(
            f"the {protocol.name} protocol needs a folder-of-files dataset on the pod"
        )
    ledger: Ledger = context.ledger or StoreLedger(None)
    hooks = context.hooks.bind(mailbox, context.pod)
    await hooks.fire(HookPoint.INIT_START)
    worker = BatchWorker(context, source, ledger, mailbox.task_id, protocol.task_key(source))
    protocol.check_worker(context)
    records = await protocol.select_files(source, ledger, worker.task_key)
    first = next(records, None)
    if first is None:
        return await _nothing_to_do(protocol, mailbox, hooks)
    count = source.count_in_background()
    await mailbox.send(MessageType.NUM_BATCHES, {"count": -1})
    await mailbox.send(MessageType.CURRENT_BATCH_ID, {"batch": 1})
    await mailbox.send(MessageType.TASK_START, {})
    await mailbox.receive(MessageType.TASK_START)
    setup = await mailbox.receive(MessageType.MODEL_PARAMETERS)
    body = setup.body if isinstance(setup.body, dict) else {}
    state = await protocol.initial_setup(body, setup.tensors, worker)
    await hooks.fire(HookPoint.INIT_END)
    await hooks.fire(HookPoint.RUN_START)
    run = BatchRun(protocol, worker, state, mailbox)
    await _run_batches(
        protocol, run, source.batches(_chain(first, records), protocol.batch_size), count, hooks
    )
    await mailbox.send(MessageType.BATCHES_COMPLETE, {"stage": BATCHES_ONLY})
    if protocol.resilience and run.stop is None:
        await run.retry_failed()
    await hooks.fire(HookPoint.RESILIENCE_END, failed=len(run.failed))
    await ledger.record_failed(worker.task_key, list(run.failed.values()))
    if run.stop is not None:
        raise run.stop
    if run.succeeded == 0:
        raise TooManyFailuresError(_nothing_processed(protocol, run.failed))
    if protocol.release_guard is ReleaseGuard.AT_RELEASE:
        worker.context.release(run.succeeded, "files")
    final = await protocol.final_reduce(state, run.values, dict(run.failed))
    await mailbox.send(MessageType.BATCHES_COMPLETE, {**final, "stage": FINISHED})
    if run.unrecorded:
        await ledger.record_processed(worker.task_key, run.unrecorded)
    await mailbox.receive(MessageType.TASK_COMPLETE)
    released = {"files": run.succeeded, "failed": len(run.failed), "batches": run.batch_id}
    await hooks.fire(HookPoint.RUN_END, released=released)
    return released


async def _nothing_to_do(
    protocol: BatchedProtocol[Any, Any, Any], mailbox: WorkerMailbox, hooks: BoundHooks
) -> dict[str, Any]:
    """No file was selected.

    With ``run_on_new_data_only`` nothing is new (an empty drop folder included): the task
    completes with 0 files (no batch, no final reduce step) unless ``fail_on_no_new_data``
    asks for NO_NEW_DATA. Otherwise the folder is empty.

    Raises:
        EmptyDatasetError: a run on every file, and no file matches the dataset's pattern.
        NoNewDataError: nothing is new and ``fail_on_no_new_data`` is set.
    """
    if not protocol.run_on_new_data_only:
        raise EmptyDatasetError(
            "no file in the data folder matches the dataset's pattern (hidden files are skipped)"
        )
    if protocol.fail_on_no_new_data:
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


def _nothing_processed(
    protocol: BatchedProtocol[Any, Any, Any], failed: Mapping[str, FailedFile]
) -> str:
    """Why the task ends when no file succeeded.

    That is the failure of the first failed file by name (the name left out for a
    protocol that keeps file names on the pod).
    """
    text = "no batch and no file could be processed"
    if not failed:
        return text
    first = failed[min(failed)]
    if protocol.sends_file_names:
        return f"{text}; first failure: {first.name}: {first.reason}"
    reason = first.reason.replace(first.name, "<file>")
    return f"{text}; first failure (file names stay on the pod): {reason}"


async def _run_batches(
    protocol: BatchedProtocol[StateT, ValueT, Any],
    run: BatchRun[StateT, ValueT],
    batches: Iterator[list[FileRecord]],
    count: FileCount,
    hooks: BoundHooks,
) -> None:
    """Every batch in turn, with CURRENT_BATCH_ID before each.

    NUM_BATCHES goes once the count is known (from the background count, or at the end).
    """
    announced = False
    for batch in batches:
        await run.batch(batch)
        await hooks.fire(HookPoint.BATCH_END, batch=run.batch_id, step=run.succeeded)
        # a selection (new data only) is not the folder the background count counted
        if not announced and count.done() and not protocol.run_on_new_data_only:
            total = math.ceil(count.result() / protocol.batch_size)
            await run.mailbox.send(MessageType.NUM_BATCHES, {"count": total})
            announced = True
        if protocol.test_run or run.stop is not None:
            break
        await run.mailbox.send(MessageType.CURRENT_BATCH_ID, {"batch": run.batch_id + 1})
    if not announced:  # the count is known now that the files were all listed
        await run.mailbox.send(MessageType.NUM_BATCHES, {"count": run.batch_id})


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
        """The resilience phase: the files of failed batches and failed files, each alone.

        Each file of a failed batch, then each file that failed on its own, is processed
        alone; a file that fails again is a file-level failure.
        """
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


def _chain(first: FileRecord, rest: Iterator[FileRecord]) -> Iterator[FileRecord]:
    yield first
    yield from rest
