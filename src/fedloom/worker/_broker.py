"""The pod's end of a task child's link: it serves the child's proxy mailbox and ledger.

:class:`LinkBroker` is the code between the link and the pod, without the process around
it (which :class:`~fedloom.worker._process.WorkerProcess` spawns and watches): it forwards
the modeller's messages to the child, sends what the child asks to send, answers its
ledger calls, and returns the record the child's ``done`` item releases. Tests run it on
an in-process pipe against the child's :class:`~fedloom.worker._child.ProxyMailbox`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from fedloom.errors import (
    AbortReason,
    ErrorReport,
    FedloomError,
    ProtocolError,
    RouteRefusedError,
    TaskAbortedError,
    TaskCancelledError,
    UnknownRecipientError,
    WorkerFailedError,
)
from fedloom.protocols import StoreLedger
from fedloom.session import WorkerMailbox
from fedloom.transport import Channel
from fedloom.wire import Message, MessageType
from fedloom.worker._ipc import Link

logger = logging.getLogger(__name__)

_EOF = object()


class StartSignal(Protocol):
    """What the broker sets when the modeller's TASK_START arrives (a process Event)."""

    def set(self) -> None:
        """Signal the start (idempotent)."""


class LinkBroker:
    """Serves one task child over its link, on the pod's event loop."""

    def __init__(
        self,
        link: Link,
        start: StartSignal,
        *,
        ledger: StoreLedger,
        handles_start: bool,
        on_ready: Callable[[], None] = lambda: None,
    ) -> None:
        """``start`` is set on TASK_START (forwarded too when ``handles_start``)."""
        self._link = link
        self._start = start
        self._ledger = ledger
        self._handles_start = handles_start
        self._on_ready = on_ready

    async def serve(
        self,
        channel: Channel,
        mailbox: WorkerMailbox,
        watchdog: asyncio.Task[None] | None = None,
    ) -> Mapping[str, Any] | None:
        """Serve the child until its ``done`` item; returns the record it released.

        Raises:
            TaskAbortedError: the modeller cancelled or aborted, or ``watchdog`` ended
                (it raises why).
            WorkerFailedError: the child failed, closed its link without ``done``, or
                sent a bad item.
        """
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any] | object] = asyncio.Queue()
        reader = threading.Thread(
            target=self._read, args=(loop, events), daemon=True, name="child-link"
        )
        reader.start()
        pump = loop.create_task(self._pump(channel, mailbox))
        try:
            return await self._serve(events, mailbox, pump, watchdog)
        finally:
            pump.cancel()

    async def _serve(
        self,
        events: asyncio.Queue[dict[str, Any] | object],
        mailbox: WorkerMailbox,
        pump: asyncio.Task[None],
        watchdog: asyncio.Task[None] | None,
    ) -> Mapping[str, Any] | None:
        getter: asyncio.Task[dict[str, Any] | object] | None = None
        others = {pump} if watchdog is None else {pump, watchdog}
        while True:
            getter = getter or asyncio.ensure_future(events.get())
            await asyncio.wait({getter, *others}, return_when=asyncio.FIRST_COMPLETED)
            for task in others:
                if task.done():
                    getter.cancel()
                    task.result()  # raises the TaskAbortedError that ended it
                    raise TaskAbortedError(AbortReason.WORKER_ERROR, "the task ended")
            if not getter.done():
                continue
            item, getter = getter.result(), None
            if not isinstance(item, dict):  # the link closed before a "done"
                if watchdog is not None:
                    await watchdog  # the child exited: the watchdog says how
                raise WorkerFailedError(
                    AbortReason.WORKER_CRASHED, "the worker process closed its link"
                )
            op = item["op"]
            if op == "ready":
                self._on_ready()
            elif op == "send" and isinstance(item.get("message"), Message):
                await self._send_for_child(mailbox, item)
            elif op == "ledger":
                await self._ledger_for_child(item)
            elif op == "done":
                return outcome(item)
            else:
                raise WorkerFailedError(
                    AbortReason.WORKER_ERROR, f"the worker sent a bad {op!r} item"
                )

    async def _send_for_child(self, mailbox: WorkerMailbox, item: dict[str, Any]) -> None:
        message: Message = item["message"]
        error: Mapping[str, Any] | None = None
        result: dict[str, Any] | None = None
        try:
            _check_address(message, mailbox)
            sent = await mailbox.send(message.type, message.body, dict(message.tensors))
            result = {"sequence": sent.sequence, "timestamp": sent.timestamp}
        except FedloomError as exc:
            error = ErrorReport.from_exception(exc).to_body()
        answer = {"id": item.get("id"), "error": error, "result": result}
        await asyncio.to_thread(self._link.put, "ack", answer)

    async def _ledger_for_child(self, item: dict[str, Any]) -> None:
        result: Any = None
        error: Mapping[str, Any] | None = None
        try:
            call, args = item.get("call"), item.get("args")
            if not isinstance(call, str) or not isinstance(args, list):
                raise ProtocolError("a ledger request needs 'call' and 'args'")
            result = await self._ledger.call(call, args)
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
                self._start.set()
                if not self._handles_start:
                    continue
            if message.type is MessageType.TASK_CANCEL:
                raise TaskCancelledError()
            if message.type is MessageType.TASK_ABORT:
                report = ErrorReport.from_body(message.body)
                raise TaskAbortedError(report.reason, report.message)
            await asyncio.to_thread(self._link.put, "deliver", None, message)

    def _read(self, loop: asyncio.AbstractEventLoop, events: asyncio.Queue[Any]) -> None:
        while True:
            try:
                item: dict[str, Any] | object = self._link.get()
            except (EOFError, FedloomError) as exc:
                if isinstance(exc, ProtocolError):
                    logger.warning("bad item from the worker: %s", exc)
                item = _EOF
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
                loop.call_soon_threadsafe(events.put_nowait, item)
            if item is _EOF:
                return


def _check_address(message: Message, mailbox: WorkerMailbox) -> None:
    """The child writes only to its task's modeller, under its task's id.

    Raises:
        UnknownRecipientError: another recipient (the task knows no one else).
        RouteRefusedError: another task's id.
    """
    if message.recipient != mailbox.modeller:
        raise UnknownRecipientError(
            f"a task's worker writes only to its modeller {mailbox.modeller!r}, "
            f"not to {message.recipient!r}"
        )
    if message.task_id != mailbox.task_id:
        raise RouteRefusedError(
            f"the worker of task {mailbox.task_id!r} may not write for task {message.task_id!r}",
            public="a task's worker may write only for its own task",
        )


def outcome(item: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The record of a ``done`` item, or the failure it reports.

    Raises:
        WorkerFailedError: the worker failed (the modeller is to be told).
        TaskAbortedError: the worker stopped on an abort the modeller already knows.
    """
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
