"""The pod's side of a task child: start it, broker its mailbox, watch it, stop it.

:class:`WorkerProcess` spawns :func:`~fedloom.worker.child.child_main` (``spawn`` start
method: a fresh interpreter that shares nothing with the pod but what it is handed) and
then, in :meth:`WorkerProcess.run`:

- forwards the task's messages from the modeller to the child, sets the cross-process
  start event when the modeller's TASK_START arrives, and stops the child when the modeller
  cancels (TASK_CANCEL / TASK_ABORT);
- sends what the child asks to send, always to this task's modeller and under this task's
  id, through the pod's own mailbox (which signs and encrypts: the child holds no key and no
  hub connection);
- watches the child: its exit (any code or signal, noticed from the process sentinel),
  its heartbeat (no tick for interval * patience seconds: hung) and its resident memory
  (above the cap: stopped). A child that fails is stopped, the modeller gets TASK_ABORT with
  the reason, and :class:`~fedloom.errors.TaskAbortedError` tells the pod to record it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import shutil
import threading
import time
from collections.abc import Mapping
from typing import Any

import psutil

from fedloom.errors import (
    AbortReason,
    ErrorReport,
    FedloomError,
    ProtocolError,
    TaskAbortedError,
    TaskCancelledError,
    WorkerFailedError,
)
from fedloom.protocols import StoreLedger
from fedloom.transport import Channel, WorkerMailbox
from fedloom.wire import Message, MessageType
from fedloom.worker.child import child_main, resolve_once
from fedloom.worker.config import IsolationSettings, WorkerConfig
from fedloom.worker.ipc import Link, exchange_folder

logger = logging.getLogger(__name__)

STARTUP_SECONDS = 120.0
"""How long a fresh child may take to import and send its first heartbeat."""
_EOF = object()


class WorkerProcess:
    """One task's child process, seen from the pod."""

    def __init__(
        self,
        config: WorkerConfig,
        settings: IsolationSettings | None = None,
        *,
        ledger: StoreLedger | None = None,
    ) -> None:
        """``ledger``: the pod's records the child may ask for (none: a throw-away one)."""
        self.config = config
        self.settings = settings or IsolationSettings()
        self.ledger = ledger or StoreLedger(None)
        context = multiprocessing.get_context("spawn")
        self._folder = exchange_folder(config.task_id)
        parent_end, self._child_end = context.Pipe(duplex=True)
        self._link = Link(parent_end, self._folder)
        self._start_event = context.Event()
        self._heartbeat = context.Value("d", 0.0, lock=False)
        self.process = context.Process(
            target=child_main,
            args=(config, self._child_end, str(self._folder), self._start_event, self._heartbeat),
            daemon=True,
            name=f"fedloom-task-{config.task_id[:12]}",
        )
        self.spawned_at = 0.0
        self.ready_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def start(self) -> None:
        """Spawn the child (it rebuilds the worker while the pod waits for TASK_START)."""
        self.spawned_at = time.monotonic()
        self.process.start()
        self._child_end.close()  # the child holds its own copy

    async def run(
        self, channel: Channel, mailbox: WorkerMailbox, start_timeout: float
    ) -> Mapping[str, Any] | None:
        """Run the task to its end; returns the record the worker released.

        Raises:
            TaskAbortedError: the modeller cancelled, or the child failed (the modeller was
                told with TASK_ABORT), with the reason.
        """
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any] | object] = asyncio.Queue()
        reader = threading.Thread(
            target=self._read, args=(loop, events), daemon=True, name="child-link"
        )
        reader.start()
        exited = loop.create_future()
        loop.add_reader(self.process.sentinel, resolve_once, exited)
        pump = loop.create_task(self._pump(channel, mailbox))
        watchdog = loop.create_task(self._watch(exited, start_timeout))
        try:
            return await self._serve(events, mailbox, pump, watchdog)
        except WorkerFailedError as failure:
            report = ErrorReport(
                failure.reason,
                failure.message,
                failure.exception_type,
                failure.traceback_summary,
                failure.reported_code,
            )
            with contextlib.suppress(FedloomError):
                await mailbox.send(MessageType.TASK_ABORT, report.to_body())
            raise TaskAbortedError(failure.reason, failure.message) from None
        finally:
            loop.remove_reader(self.process.sentinel)
            for task in (pump, watchdog):
                task.cancel()
            await self.stop()

    async def _serve(
        self,
        events: asyncio.Queue[dict[str, Any] | object],
        mailbox: WorkerMailbox,
        pump: asyncio.Task[None],
        watchdog: asyncio.Task[None],
    ) -> Mapping[str, Any] | None:
        getter: asyncio.Task[dict[str, Any] | object] | None = None
        while True:
            getter = getter or asyncio.ensure_future(events.get())
            await asyncio.wait({getter, pump, watchdog}, return_when=asyncio.FIRST_COMPLETED)
            for task in (pump, watchdog):
                if task.done():
                    getter.cancel()
                    task.result()  # raises the TaskAbortedError that ended it
                    raise TaskAbortedError(AbortReason.WORKER_ERROR, "the task ended")
            if not getter.done():
                continue
            item, getter = getter.result(), None
            if not isinstance(item, dict):  # the link closed before a "done"
                await watchdog  # the child exited: the watchdog says how
                raise _abort(AbortReason.WORKER_CRASHED, "the worker process closed its link")
            op = item["op"]
            if op == "ready":
                self.ready_at = time.monotonic()
                logger.info(
                    "task %s: worker ready %.2f s after spawn",
                    self.config.task_id,
                    self.ready_at - self.spawned_at,
                )
            elif op == "send" and isinstance(item.get("message"), Message):
                await self._send_for_child(mailbox, item)
            elif op == "ledger":
                await self._ledger_for_child(item)
            elif op == "done":
                return _outcome(item)
            else:
                raise _abort(AbortReason.WORKER_ERROR, f"the worker sent a bad {op!r} item")

    async def _send_for_child(self, mailbox: WorkerMailbox, item: dict[str, Any]) -> None:
        message: Message = item["message"]
        error: Mapping[str, Any] | None = None
        try:
            # recipient and task come from the pod, whatever the child wrote
            await mailbox.send(message.type, message.body, dict(message.tensors))
        except FedloomError as exc:
            error = ErrorReport.from_exception(exc).to_body()
        await asyncio.to_thread(self._link.put, "ack", {"id": item.get("id"), "error": error})

    async def _ledger_for_child(self, item: dict[str, Any]) -> None:
        result: Any = None
        error: Mapping[str, Any] | None = None
        try:
            call, args = item.get("call"), item.get("args")
            if not isinstance(call, str) or not isinstance(args, list):
                raise ProtocolError("a ledger request needs 'call' and 'args'")
            result = await self.ledger.call(call, args)
        except (FedloomError, TypeError, ValueError) as exc:
            error = ErrorReport.from_exception(exc).to_body()
        answer = {"id": item.get("id"), "error": error, "result": result}
        await asyncio.to_thread(self._link.put, "ack", answer)

    async def _pump(self, channel: Channel, mailbox: WorkerMailbox) -> None:
        """Modeller → child; the start signal; cancellation."""
        while True:
            message = await channel.get()
            if message.sender != mailbox.modeller:
                logger.warning(
                    "dropping %s from %r: not this task's modeller", message.type, message.sender
                )
                continue
            if message.type is MessageType.TASK_START:
                self._start_event.set()
                if not self.config.handles_start:
                    continue
            if message.type is MessageType.TASK_CANCEL:
                raise TaskCancelledError()
            if message.type is MessageType.TASK_ABORT:
                report = ErrorReport.from_body(message.body)
                raise TaskAbortedError(report.reason, report.message)
            await asyncio.to_thread(self._link.put, "deliver", None, message)

    async def _watch(self, exited: asyncio.Future[None], start_timeout: float) -> None:
        """Ends (raising the abort) when the child dies, hangs or uses too much memory."""
        settings = self.settings
        check = min(1.0, settings.heartbeat_interval / 2)
        started = time.monotonic()
        while True:
            await asyncio.wait({exited}, timeout=check)  # cancel-safe, unlike 3.11 wait_for
            if exited.done():
                self.process.join(1.0)
                raise _abort(AbortReason.WORKER_CRASHED, _describe_exit(self.process.exitcode))
            now = time.monotonic()
            if not self._start_event.is_set() and now - started > start_timeout:
                raise _abort(
                    AbortReason.MODELLER_TIMEOUT,
                    f"no TASK_START from the modeller within {start_timeout:.0f} s",
                )
            beat = self._heartbeat.value
            if beat == 0.0:
                if now - self.spawned_at > STARTUP_SECONDS:
                    raise _abort(
                        AbortReason.WORKER_UNRESPONSIVE,
                        f"the worker did not start within {STARTUP_SECONDS:.0f} s",
                    )
            elif time.time() - beat > settings.hang_seconds:
                raise _abort(
                    AbortReason.WORKER_UNRESPONSIVE,
                    f"no heartbeat from the worker for {settings.hang_seconds:.0f} s",
                )
            limit = settings.memory_limit_bytes
            if limit is not None:
                used = _resident_bytes(self.process.pid)
                if used > limit:
                    raise _abort(
                        AbortReason.WORKER_OUT_OF_MEMORY,
                        f"the task used {used >> 20} MiB, above the pod's cap of {limit >> 20} MiB",
                    )

    def _read(self, loop: asyncio.AbstractEventLoop, events: asyncio.Queue[Any]) -> None:
        while True:
            try:
                item: dict[str, Any] | object = self._link.get()
            except (EOFError, FedloomError) as exc:
                if isinstance(exc, ProtocolError):
                    logger.warning(
                        "task %s: bad item from the worker: %s", self.config.task_id, exc
                    )
                item = _EOF
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
                loop.call_soon_threadsafe(events.put_nowait, item)
            if item is _EOF:
                return

    async def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after the grace period) and clean up."""
        process = self.process
        if process.pid is not None and process.exitcode is None:
            with contextlib.suppress(FedloomError):
                self._link.put("stop")
            await asyncio.to_thread(process.join, min(self.settings.stop_grace, 1.0))
            if process.exitcode is None:
                process.terminate()
                await asyncio.to_thread(process.join, self.settings.stop_grace)
            if process.exitcode is None:
                process.kill()
                await asyncio.to_thread(process.join, 5.0)
        self._link.close()
        shutil.rmtree(self._folder, ignore_errors=True)


def _abort(reason: AbortReason, message: str) -> WorkerFailedError:
    return WorkerFailedError(reason, message)


def _outcome(item: Mapping[str, Any]) -> Mapping[str, Any] | None:
    status = item.get("status")
    if status == "completed":
        record = item.get("record")
        return record if isinstance(record, dict) else None
    try:
        report = ErrorReport.from_body(item.get("error"))
    except FedloomError:
        report = ErrorReport(AbortReason.WORKER_ERROR, "the worker failed", "", "")
    # the child classified the error (out of memory or not) where it had the exception:
    # ErrorReport.from_exception, through fedloom.errors.is_out_of_memory
    reason = report.reason
    if item.get("notify", True):
        raise WorkerFailedError(
            reason, report.message, report.exception_type, report.traceback_summary, report.code
        )
    raise TaskAbortedError(reason, report.message)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "the worker process ended"
    if code < 0:
        return f"the worker process was killed by signal {-code}"
    return f"the worker process exited with code {code}"


def _resident_bytes(pid: int | None) -> int:
    if pid is None:
        return 0
    try:
        process = psutil.Process(pid)
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total
    except psutil.Error:
        return 0
