"""The spawn target: a task's worker side in a process of its own.

:func:`child_main` rebuilds the worker from a :class:`WorkerConfig` (approved plugin
modules, the protocol from its registered name and JSON config, the datasource, the hooks)
and runs the protocol's worker side against a :class:`ProxyMailbox`, whose sends and
receives go over the link to the pod. The child has no hub connection and no key: the pod
signs, encrypts and decrypts on its behalf and only lets it talk to the task's modeller.

It never raises: whatever happens, including while rebuilding, ends with one ``done``
item (status, the released record or an error report) on the link; only a process that is
killed or exits from inside user code ends without it, and the pod notices that.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import threading
from collections.abc import Sequence
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

from fedloom._hooks import build_hooks
from fedloom._registry import import_plugins
from fedloom.algorithms.inference import UsageCut
from fedloom.errors import (
    ErrorReport,
    FedloomError,
    MailboxClosedError,
    ReceiveTimeoutError,
    TaskAbortedError,
    TransportError,
    error_from_public,
)
from fedloom.protocols import WorkerContext, load_protocol
from fedloom.protocols._ledger import failed_from_body, failed_to_body
from fedloom.session import WorkerMailbox
from fedloom.store import FailedFile
from fedloom.transport import MailboxStatistics, TaskRouter
from fedloom.wire import Message
from fedloom.worker._config import WorkerConfig
from fedloom.worker._heartbeat import tick
from fedloom.worker._ipc import Link
from fedloom.worker._lifetime import die_with_parent
from fedloom.worker._threads import apply_thread_budget

logger = logging.getLogger(__name__)

_CLOSED = object()


class ProxyMailbox:
    """The child's ``Mailbox``: every call is a request to the pod over the link."""

    def __init__(self, identity: str, link: Link, loop: asyncio.AbstractEventLoop) -> None:
        self._identity = identity
        self._link = link
        self._loop = loop
        self._inbound: asyncio.Queue[Message | object] = asyncio.Queue()
        self._acks: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._sent = 0
        self._received = 0
        self._closed = False

    @property
    def identity(self) -> str:
        return self._identity

    async def send(self, message: Message) -> Message:
        """Send through the pod; returns the message as the pod sent it (its sequence).

        Raises:
            MailboxClosedError: this mailbox is closed, or the pod went away.
            WireError: the message cannot be encoded.
            UnknownRecipientError: the recipient is not the task's modeller (or not known
                to the hub); any other error the pod's send raised, by its catalogue code.
        """
        if self._closed:
            raise MailboxClosedError("the task's mailbox is closed")
        stamped = message.with_updates(sender=self._identity)
        answer = await self.request("send", {}, stamped)
        self._sent += 1
        if isinstance(answer, dict):
            sequence, timestamp = answer.get("sequence"), answer.get("timestamp")
            if isinstance(sequence, int) and isinstance(timestamp, int | float):
                return stamped.with_updates(sequence=sequence, timestamp=float(timestamp))
        return stamped

    async def request(self, op: str, fields: dict[str, Any], message: Message | None = None) -> Any:
        """One request to the pod; returns its answer's ``result``.

        Raises:
            FedloomError: the pod could not do it: the error it reported, rebuilt from its
                catalogue code and public text (a TransportError when it sent no code).
            MailboxClosedError: the pod went away.
        """
        request = next(self._ids)
        ack: asyncio.Future[Any] = self._loop.create_future()
        self._acks[request] = ack
        try:
            self._link.put(op, {"id": request, **fields}, message)
            return await ack
        finally:
            self._acks.pop(request, None)

    async def receive(self, timeout: float | None = None) -> Message:
        if self._closed:
            raise MailboxClosedError("the task's mailbox is closed")
        try:
            async with asyncio.timeout(timeout):  # wait_for could lose a cancellation (3.11)
                item = await self._inbound.get()
        except TimeoutError:
            raise ReceiveTimeoutError(f"no message within {timeout} s") from None
        if not isinstance(item, Message):
            self._inbound.put_nowait(_CLOSED)
            raise MailboxClosedError("the pod closed the task's mailbox")
        self._received += 1
        return item

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._inbound.put_nowait(_CLOSED)

    def statistics(self) -> MailboxStatistics:
        return MailboxStatistics(
            identity=self._identity,
            sent=self._sent,
            received=self._received,
            queued=self._inbound.qsize(),
            closed=self._closed,
        )

    # called on the loop by the link reader
    def deliver(self, message: Message) -> None:
        self._inbound.put_nowait(message)

    def acknowledge(self, request: int, error: object, result: object = None) -> None:
        ack = self._acks.get(request)
        if ack is None or ack.done():
            return
        if error is None:
            ack.set_result(result)
            return
        try:
            report = ErrorReport.from_body(error)
        except FedloomError as exc:
            ack.set_exception(TransportError(f"the pod could not do it: {exc}"))
            return
        if report.code is None:
            ack.set_exception(TransportError(f"the pod could not do it: {report.message}"))
        else:  # the pod's own typed error (UnknownRecipientError, WireError, ...)
            ack.set_exception(error_from_public(report.code, report.message))

    def attach(self, main: asyncio.Task[Any] | None = None) -> threading.Thread:
        """Start reading the link into this mailbox, in a daemon thread it returns.

        A ``stop`` from the pod cancels ``main``; the thread ends when the link closes.
        """
        reader = threading.Thread(
            target=_read_link,
            args=(self._link, self, self._loop, main),
            daemon=True,
            name="link-reader",
        )
        reader.start()
        return reader

    def lost(self) -> None:
        for ack in self._acks.values():
            if not ack.done():
                ack.set_exception(MailboxClosedError("the pod went away"))
        self._inbound.put_nowait(_CLOSED)


class LinkLedger:
    """The child's :class:`~fedloom.protocols.Ledger`: each call is a request to the pod."""

    def __init__(self, proxy: ProxyMailbox) -> None:
        self._proxy = proxy

    async def _call(self, call: str, *args: Any) -> Any:
        return await self._proxy.request("ledger", {"call": call, "args": list(args)})

    async def processed_files(self, task_hash: str) -> dict[str, int]:
        found = await self._call("processed_files", task_hash)
        return {str(name): int(mtime) for name, mtime in dict(found).items()}

    async def failed_files(self, task_hash: str) -> list[FailedFile]:
        return [failed_from_body(row) for row in await self._call("failed_files", task_hash)]

    async def record_processed(self, task_hash: str, files: Sequence[tuple[str, int]]) -> None:
        await self._call("record_processed", task_hash, [list(f) for f in files])

    async def record_failed(self, task_hash: str, failures: Sequence[FailedFile]) -> None:
        await self._call("record_failed", task_hash, [failed_to_body(f) for f in failures])

    async def consume(self, model: str, new: int) -> UsageCut:
        allowed, overrun, exceeded = await self._call("consume", model, new)
        return UsageCut(int(allowed), int(overrun), bool(exceeded))

    async def approved_models(self) -> frozenset[str] | None:
        found = await self._call("approved_models")
        return None if found is None else frozenset(str(digest) for digest in found)


def child_main(
    config: WorkerConfig,
    connection: Any,
    folder: str,
    start: Event,
    heartbeat: Synchronized[float],
) -> None:
    """Run one task's worker side; the target of the pod's spawned child. Never raises."""
    die_with_parent(signal.SIGKILL)  # a task must not outlive its pod
    link = Link(connection, Path(folder))
    try:
        outcome = asyncio.run(_main(config, link, start, heartbeat))
    except BaseException as exc:
        outcome = _failure(exc)
    with contextlib.suppress(BaseException):
        link.put("done", outcome)
    with contextlib.suppress(BaseException):
        link.close()


def _failure(exc: BaseException, *, notify: bool = True) -> dict[str, Any]:
    if isinstance(exc, TaskAbortedError):
        report = ErrorReport(exc.reason, exc.message, type(exc).__name__, "", exc.code)
        return {"status": "aborted", "error": report.to_body(), "notify": False}
    return {
        "status": "failed",
        "error": ErrorReport.from_exception(exc).to_body(),
        "notify": notify,
    }


async def _main(
    config: WorkerConfig, link: Link, start: Event, heartbeat: Synchronized[float]
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    beating = loop.create_task(tick(heartbeat, config.heartbeat_interval))
    proxy = ProxyMailbox(config.pod, link, loop)
    proxy.attach(asyncio.current_task())
    try:
        return await _run(config, link, proxy, start)
    except (Exception, asyncio.CancelledError) as exc:
        return _failure(exc)
    finally:
        beating.cancel()


async def _run(
    config: WorkerConfig, link: Link, proxy: ProxyMailbox, start: Event
) -> dict[str, Any]:
    if config.threads is not None:  # before torch (or a plugin) starts any work
        apply_thread_budget(config.threads)
    import_plugins(config.plugins)
    protocol = load_protocol(dict(config.protocol))
    context = _context(config, LinkLedger(proxy))
    # the data is loaded here, so a broken dataset fails the child, not the pod
    len(config.datasource)
    link.put("ready")
    if not config.handles_start:
        await _started(start)
    router = TaskRouter(proxy)
    router.start()
    channel = router.open_channel(config.task_id)
    mailbox = WorkerMailbox(router, channel, config.modeller)
    try:
        record = await protocol.serve_worker(mailbox, context)
    finally:
        await router.close()
    return {"status": "completed", "record": record}


def _context(config: WorkerConfig, ledger: LinkLedger) -> WorkerContext:
    hooks = build_hooks(config.hooks)  # an unknown name fails the task, naming it
    return WorkerContext(
        config.pod,
        config.datasource,
        config.min_rows,
        hooks=hooks,
        ledger=ledger,
        outputs=config.outputs,
    )


async def _started(start: Event) -> None:
    """Wait for the pod to say the modeller's TASK_START arrived (a watcher thread)."""
    loop = asyncio.get_running_loop()
    started = loop.create_future()

    def watch() -> None:
        start.wait()
        loop.call_soon_threadsafe(resolve_once, started)

    threading.Thread(target=watch, daemon=True, name="start-watcher").start()
    await started


def resolve_once(future: asyncio.Future[None]) -> None:
    """Set ``future``'s result unless it is already done (for loop callbacks)."""
    if not future.done():
        future.set_result(None)


def _read_link(
    link: Link,
    proxy: ProxyMailbox,
    loop: asyncio.AbstractEventLoop,
    main: asyncio.Task[Any] | None,
) -> None:
    while True:
        try:
            item = link.get()
        except (EOFError, FedloomError):
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(proxy.lost)
            return
        op = item["op"]
        with contextlib.suppress(RuntimeError):  # the loop may already be closed
            if op == "deliver" and isinstance(item.get("message"), Message):
                loop.call_soon_threadsafe(proxy.deliver, item["message"])
            elif op == "ack" and isinstance(item.get("id"), int):
                loop.call_soon_threadsafe(
                    proxy.acknowledge, item["id"], item.get("error"), item.get("result")
                )
            elif op == "stop" and main is not None:
                loop.call_soon_threadsafe(main.cancel)
                return
