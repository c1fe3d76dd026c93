"""The pod: holds datasets, decides which tasks it accepts, runs them, keeps results.

A pod serves one :class:`~fedloom.transport.Mailbox`. For every JOB_REQUEST it checks its
:class:`PodPolicy` (modeller, protocol, dataset), answers JOB_ACCEPT or JOB_REJECT with a
typed reason, and runs each accepted task's worker side until TASK_COMPLETE. A task that
fails for any reason ends with TASK_ABORT to the modeller and an ``aborted`` row in the
pod's store; the pod itself keeps serving.

At most ``PodPolicy.max_concurrent_tasks`` tasks run at once. A task accepted beyond that
waits in arrival order; the modeller is told its place with PROGRESS
``{"state": "queued", "position": n}`` (1 = next) when it is queued and whenever the place
changes, then gets the usual PREPARING_DATA when the task starts. A queued task the
modeller cancels or aborts leaves the queue at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fedloom.datasources import Datasource
from fedloom.errors import (
    AbortReason,
    AccessDeniedError,
    ConfigError,
    DatasetNotFoundError,
    ErrorReport,
    FedloomError,
    MailboxClosedError,
    ModellerTimeoutError,
    ReceiveTimeoutError,
    TaskAbortedError,
    TaskCancelledError,
)
from fedloom.events import EventCallback, EventKind, EventStream, Subscription
from fedloom.hooks import DEFAULT_WORKER_HOOKS, build_hooks
from fedloom.pod.activity import PodActivity, PodStatistics
from fedloom.protocols import DEFAULT_MIN_ROWS, Protocol, StoreLedger, WorkerContext, load_protocol
from fedloom.store import PodStore
from fedloom.transport import Channel, Mailbox, TaskRouter, WorkerMailbox
from fedloom.transport.task import report_of
from fedloom.wire import Message, MessageType
from fedloom.worker import IsolationSettings, WorkerConfig, WorkerProcess

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_OUTCOME_CHARACTERS = 300
"""How much of a task's outcome (an error message) its log line shows."""

_QUIET_AFTER_END = frozenset({MessageType.TASK_COMPLETE, MessageType.HEARTBEAT})
"""What a modeller may still send a task the pod has already ended (not worth a log line)."""

DEFAULT_START_TIMEOUT = 300.0
"""Seconds an accepted task waits for the modeller's TASK_START before giving up."""

DEFAULT_MODELLER_TIMEOUT = 300.0
"""Seconds an accepted task may go without any message from its modeller (the modeller
sends HEARTBEAT while a task runs) before the pod ends it with MODELLER_TIMEOUT."""

DEFAULT_MAX_CONCURRENT_TASKS = 4
"""Tasks a pod runs at once; more are accepted and wait in arrival order."""


@dataclass(frozen=True)
class PodPolicy:
    """What a pod accepts, and how many tasks it runs at once.

    ``None`` means "any" for the allow-lists.

    Raises:
        ConfigError: ``min_rows`` or ``max_concurrent_tasks`` is not an integer >= 1, or
            ``start_timeout`` or ``modeller_timeout`` is not > 0.
    """

    allowed_protocols: frozenset[str] | None = None
    allowed_modellers: frozenset[str] | None = None
    allowed_algorithms: frozenset[str] | None = None
    """Registered model and algorithm names a task may run here (see Protocol.algorithms)."""
    min_rows: int = DEFAULT_MIN_ROWS
    start_timeout: float = DEFAULT_START_TIMEOUT
    modeller_timeout: float = DEFAULT_MODELLER_TIMEOUT
    """A task whose modeller sends nothing (not even HEARTBEAT) for this long is ended:
    a modeller that died must not hold the pod's task slots for ever."""
    max_concurrent_tasks: int = DEFAULT_MAX_CONCURRENT_TASKS
    usage_limits: Mapping[str, int] = field(default_factory=dict)
    """Most predictions each model (by registered name) may make on this pod, ever."""
    approved_models: frozenset[str] | None = None
    """SHA-256 hashes of model files tasks may run; None: any weights a modeller sends."""

    def __post_init__(self) -> None:
        if (
            isinstance(self.min_rows, bool)
            or not isinstance(self.min_rows, int)
            or self.min_rows < 1
        ):
            raise ConfigError(f"PodPolicy.min_rows must be an integer >= 1, got {self.min_rows!r}")
        for name in ("start_timeout", "modeller_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"PodPolicy.{name} must be a number of seconds > 0")
        if (
            isinstance(self.max_concurrent_tasks, bool)
            or not isinstance(self.max_concurrent_tasks, int)
            or self.max_concurrent_tasks < 1
        ):
            raise ConfigError(
                "PodPolicy.max_concurrent_tasks must be an integer >= 1, "
                f"got {self.max_concurrent_tasks!r}"
            )


@dataclass(frozen=True)
class _Accepted:
    protocol: Protocol
    datasource: Datasource


class _Slots:
    """At most ``limit`` tasks hold a slot; the others wait in arrival order.

    A freed slot goes straight to the head of the queue, so a task that arrives later never
    overtakes one already waiting. Each waiter has an event that is set whenever the queue
    moves (it got the slot, or someone ahead of it left).
    """

    def __init__(self) -> None:
        self.running: set[str] = set()
        self._waiting: dict[str, asyncio.Event] = {}  # insertion order = arrival order

    def admit(self, task_id: str, limit: int) -> None:
        """Give ``task_id`` a slot now if one is free and nobody waits; else queue it."""
        if not self._waiting and len(self.running) < limit:
            self.running.add(task_id)
        else:
            self._waiting[task_id] = asyncio.Event()

    def queued(self) -> list[str]:
        return list(self._waiting)

    def position(self, task_id: str) -> int | None:
        """1-based place in the queue; None once ``task_id`` holds a slot."""
        if task_id in self.running:
            return None
        return list(self._waiting).index(task_id) + 1

    def moved(self, task_id: str) -> asyncio.Event:
        return self._waiting[task_id]

    def release(self, task_id: str, limit: int) -> None:
        """``task_id`` ended (running or queued): hand free slots on, wake the waiters."""
        moved = self._waiting.pop(task_id, None) is not None
        self.running.discard(task_id)
        while self._waiting and len(self.running) < limit:
            head = next(iter(self._waiting))
            self.running.add(head)
            self._waiting.pop(head).set()
            moved = True
        if moved:
            for event in self._waiting.values():
                event.set()


class _HeldChannel(Channel):
    """A task's channel with the messages read while the task was queued put back in front.

    A queued task must read its channel to notice TASK_CANCEL / TASK_ABORT, but the
    modeller's TASK_START and first instruction may arrive meanwhile: those are held here
    and handed to the worker side first, in order.


    It also keeps the time the modeller was last heard from: HEARTBEAT messages only
    say that it is alive, so they are noted here and never reach the worker side.
    """

    def __init__(self, inner: Channel, modeller: str) -> None:
        super().__init__(inner.task_id)
        self.inner = inner
        self.modeller = modeller
        self.held: deque[Message] = deque()
        self.heard = asyncio.get_running_loop().time()
        # on arrival: the task may be busy for long without reading its channel
        inner.observe(self._note)

    def put(self, item: Message | None) -> None:
        self.inner.put(item)

    def _note(self, message: Message) -> bool:
        """Note that the modeller was heard; True if ``message`` says nothing more."""
        if message.sender != self.modeller:
            return False
        self.heard = asyncio.get_running_loop().time()
        return message.type is MessageType.HEARTBEAT

    async def get(self, timeout: float | None = None) -> Message:
        if self.held:
            return self.held.popleft()
        return await self.inner.get(timeout)

    def qsize(self) -> int:
        return len(self.held) + self.inner.qsize()


class Pod:
    """A data owner's node; see the module docstring."""

    def __init__(
        self,
        name: str,
        datasets: Mapping[str, Datasource],
        *,
        policy: PodPolicy | None = None,
        store: PodStore | None = None,
        isolation: IsolationSettings | None = None,
        plugins: tuple[str, ...] = (),
        hooks: tuple[str, ...] = DEFAULT_WORKER_HOOKS,
        outputs: Path | None = None,
        events: EventStream | None = None,
    ) -> None:
        """A pod serving ``datasets`` under ``policy``.

        ``isolation``: run each task in a spawned child process watched with these
        settings (the pod daemon always does); ``None`` runs tasks in this process (the
        in-memory federation, tests). ``plugins``: modules the pod's admin approved, imported
        in each child to register their protocols, models and algorithms. ``hooks``:
        registered hook names built in each child. ``events``: where the pod publishes
        what happens to its tasks (a new stream unless given; see :meth:`subscribe`)."""
        self.name = name
        self.datasets = dict(datasets)
        self.policy = policy or PodPolicy()
        self.store = store
        self.isolation = isolation
        self.plugins = tuple(plugins)
        self.hooks = tuple(hooks)
        self.outputs = outputs
        """Where tasks may write reports and images (one subfolder per task)."""
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._slots = _Slots()
        self.ledger = StoreLedger(
            store, self.policy.usage_limits, approved_models=self.policy.approved_models
        )
        """Processed/failed files and usage, for tasks (their children ask the pod)."""
        self.workers: dict[str, WorkerProcess] = {}
        """The child processes of running tasks, by task id."""
        self.activity = PodActivity(name, events)
        """What happens to the pod's tasks: its events and their counts."""

    def subscribe(self, callback: EventCallback) -> Subscription:
        """Deliver the pod's task events to ``callback``, on the pod's event loop.

        Per task, participant the pod's name: TASK_ACCEPTED or TASK_REJECTED (``reason``,
        ``message``) when the request is decided, TASK_STARTED once it holds a slot, then
        TASK_FINISHED or TASK_ABORTED (``reason``, ``message``); each with ``protocol``
        and ``modeller``, the ends with ``seconds`` (see :class:`~fedloom.events.EventKind`).
        """
        return self.activity.subscribe(callback)

    def statistics(self) -> PodStatistics:
        """What the pod holds now and what happened to its tasks since it started."""
        return self.activity.statistics(self.running_tasks(), self.queued_tasks())

    def _publish(
        self, request: Message, protocol: str, kind: EventKind, **fields: str | float
    ) -> None:
        # what the modeller sent is bounded text here, as in the pod's log line
        details: dict[str, str | float] = {
            "protocol": _shown(protocol),
            "modeller": _shown(request.sender),
            **fields,
        }
        self.activity.publish(_shown(request.task_id), kind, details)

    async def serve(self, mailbox: Mailbox) -> None:
        """Answer requests on ``mailbox`` until it closes; then stop running tasks."""
        router = TaskRouter(mailbox)
        router.start()
        try:
            while True:
                try:
                    message = await router.inbox.get()
                except MailboxClosedError:
                    break
                if message.type is MessageType.JOB_REQUEST:
                    try:
                        await self._on_job_request(router, message)
                    except FedloomError as exc:  # e.g. the modeller left before our answer
                        logger.warning(
                            "%s: could not answer task %s: %s", self.name, message.task_id, exc
                        )
                elif message.type not in _QUIET_AFTER_END:
                    logger.info(
                        "%s: ignoring %s for unknown task %s",
                        self.name,
                        message.type.value,
                        message.task_id,
                    )
        finally:
            for task in self._tasks.values():
                task.cancel()
            for task in list(self._tasks.values()):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            # a task cancelled before its first step never ran its clean-up
            self._tasks.clear()
            self._slots = _Slots()
            await router.close()

    async def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every accepted task to end; True if they did.

        A pod asked to stop uses this to let tasks that are about to finish (a modeller's
        TASK_COMPLETE in flight) record their end before it cancels the rest.
        """
        tasks = list(self._tasks.values())
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        return not self._tasks

    def running_tasks(self) -> list[str]:
        """Ids of the accepted tasks that hold one of the pod's slots, sorted."""
        return sorted(self._slots.running)

    def queued_tasks(self) -> list[str]:
        """Ids of the accepted tasks waiting for a slot, next first."""
        return self._slots.queued()

    def _decide(self, message: Message) -> _Accepted:
        policy = self.policy
        if policy.allowed_modellers is not None and message.sender not in policy.allowed_modellers:
            raise AccessDeniedError(f"modeller {message.sender!r} is not allowed on this pod")
        body = message.body
        if not isinstance(body, dict) or not isinstance(body.get("dataset"), str):
            raise ConfigError('a JOB_REQUEST body must be {"task": {...}, "dataset": "<name>"}')
        protocol = load_protocol(body.get("task"))
        refused = sorted(protocol.algorithms() - (policy.allowed_algorithms or frozenset()))
        if policy.allowed_algorithms is not None and refused:
            raise AccessDeniedError(f"algorithms {refused} are not allowed on this pod")
        if policy.allowed_protocols is not None and protocol.name not in policy.allowed_protocols:
            raise AccessDeniedError(f"protocol {protocol.name!r} is not allowed on this pod")
        datasource = self.datasets.get(body["dataset"])
        if datasource is None:
            # names only: the one the modeller asked for and those the pod offers
            missing = (
                f"pod {self.name!r} has no dataset {body['dataset']!r}; "
                f"it has: {sorted(self.datasets) or 'none'}"
            )
            raise DatasetNotFoundError(missing, public=missing)
        if message.task_id in self._tasks:
            raise ConfigError(f"task {message.task_id!r} is already running on this pod")
        return _Accepted(protocol, datasource)

    async def _on_job_request(self, router: TaskRouter, request: Message) -> None:
        reply = Message(MessageType.JOB_ACCEPT, self.name, request.sender, request.task_id)
        try:
            accepted = self._decide(request)
        except FedloomError as exc:
            report = ErrorReport.from_exception(exc)
            task = request.body.get("task") if isinstance(request.body, dict) else None
            requested = task.get("protocol") if isinstance(task, dict) else None
            protocol = requested[:64] if isinstance(requested, str) and requested else "?"
            self._log_task(request, protocol, f"rejected ({report.reason.value}: {report.message})")
            self._publish(
                request,
                protocol,
                EventKind.TASK_REJECTED,
                reason=report.reason.value,
                message=report.message,
            )
            await router.send(
                reply.with_updates(type=MessageType.JOB_REJECT, body=report.to_body())
            )
            self._record(request, protocol, "rejected", report.reason.value)
            return
        channel = _HeldChannel(router.open_channel(request.task_id), request.sender)
        # the modeller heartbeats well within the time this pod waits for it
        timeout = self.policy.modeller_timeout
        await router.send(reply.with_updates(body={"modeller_timeout": timeout}))
        self._record(request, accepted.protocol.name, "accepted")
        self._publish(request, accepted.protocol.name, EventKind.TASK_ACCEPTED)
        mailbox = WorkerMailbox(router, channel, request.sender)
        self._slots.admit(request.task_id, self.policy.max_concurrent_tasks)
        self._tasks[request.task_id] = asyncio.get_running_loop().create_task(
            self._run_task(router, mailbox, channel, request, accepted),
            name=f"{self.name}:{request.task_id}",
        )

    async def _wait_for_slot(self, mailbox: WorkerMailbox, channel: _HeldChannel) -> None:
        """Return once the task holds a slot, telling the modeller its place meanwhile.

        Raises:
            TaskAbortedError: the modeller cancelled or aborted the task while it waited.
            MailboxClosedError: the pod's connection closed while the task waited.
        """
        task_id = mailbox.task_id
        reported: int | None = None
        reader: asyncio.Task[Message] | None = None
        try:
            while (position := self._slots.position(task_id)) is not None:
                if position != reported:
                    await mailbox.progress(state="queued", position=position)
                    reported = position
                    continue  # the queue may have moved while that was sent
                # nothing was awaited since the position was read: an earlier move is
                # already in it, and any later one sets the event again
                moved = self._slots.moved(task_id)
                moved.clear()
                reader = reader or asyncio.ensure_future(channel.inner.get())
                waiter = asyncio.ensure_future(moved.wait())
                try:
                    await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                if reader.done():
                    message, reader = reader.result(), None
                    self._hold(mailbox, channel, message)
        finally:
            if reader is not None and not reader.done():
                reader.cancel()  # a cancelled get leaves its message in the channel
            elif reader is not None and not reader.cancelled() and reader.exception() is None:
                channel.held.append(reader.result())

    def _hold(self, mailbox: WorkerMailbox, channel: _HeldChannel, message: Message) -> None:
        """Act on a message that reached a queued task: end it, or keep it for later."""
        if message.sender == mailbox.modeller and message.type is MessageType.TASK_CANCEL:
            raise TaskCancelledError()
        if message.sender == mailbox.modeller and message.type is MessageType.TASK_ABORT:
            report = report_of(message)
            raise TaskAbortedError(report.reason, report.message)
        channel.held.append(message)

    async def _run_task(
        self,
        router: TaskRouter,
        mailbox: WorkerMailbox,
        channel: _HeldChannel,
        request: Message,
        accepted: _Accepted,
    ) -> None:
        name = accepted.protocol.name

        async def work() -> Mapping[str, Any] | None:
            await self._wait_for_slot(mailbox, channel)
            self._publish(request, name, EventKind.TASK_STARTED)
            if self.isolation is not None:
                return await self._run_in_child(request, accepted, channel, mailbox)
            return await self._run_inline(accepted, mailbox)

        began = time.monotonic()

        def took() -> str:
            return f"{time.monotonic() - began:.1f} s"

        def aborted(reason: str, message: str) -> None:
            seconds = time.monotonic() - began
            self._publish(
                request,
                name,
                EventKind.TASK_ABORTED,
                reason=reason,
                message=message,
                seconds=seconds,
            )

        try:
            released = await _while_heard(work(), channel, self.policy.modeller_timeout)
            self._record(request, name, "completed", result=released)
            self._log_task(request, name, f"completed in {took()}")
            seconds = time.monotonic() - began
            self._publish(request, name, EventKind.TASK_FINISHED, seconds=seconds)
        except TaskAbortedError as exc:
            # DESIGN: the pod answers a TASK_CANCEL; a modeller thought gone may come back
            if isinstance(exc, TaskCancelledError | ModellerTimeoutError):
                report = ErrorReport(exc.reason, exc.message, type(exc).__name__, "", exc.code)
                with contextlib.suppress(FedloomError):
                    await mailbox.send(MessageType.TASK_ABORT, report.to_body())
            self._record(request, name, "aborted", exc.reason.value)
            self._log_task(
                request, name, f"aborted after {took()} ({exc.reason.value}: {exc.message})"
            )
            aborted(exc.reason.value, exc.message)
        except MailboxClosedError:
            self._record(request, name, "aborted", AbortReason.WORKER_UNRESPONSIVE.value)
            self._log_task(request, name, f"aborted after {took()} (the hub connection closed)")
            aborted(AbortReason.WORKER_UNRESPONSIVE.value, "the hub connection closed")
        except asyncio.CancelledError:
            self._record(request, name, "aborted", AbortReason.CANCELLED_BY_MODELLER.value)
            self._log_task(request, name, f"aborted after {took()} (the pod is stopping)")
            aborted(AbortReason.CANCELLED_BY_MODELLER.value, "the pod is stopping")
            raise
        except Exception as exc:  # a task must never take the pod down
            report = ErrorReport.from_exception(exc)
            with contextlib.suppress(FedloomError):
                await mailbox.send(MessageType.TASK_ABORT, report.to_body())
            self._record(request, name, "aborted", report.reason.value)
            outcome = f"failed after {took()} ({report.reason.value}: {report.message})"
            self._log_task(request, name, outcome, level=logging.WARNING)
            aborted(report.reason.value, report.message)
        finally:
            self._slots.release(request.task_id, self.policy.max_concurrent_tasks)
            router.close_channel(request.task_id)
            self._tasks.pop(request.task_id, None)

    async def _run_inline(
        self, accepted: _Accepted, mailbox: WorkerMailbox
    ) -> Mapping[str, Any] | None:
        # loading the data now makes a broken dataset abort before the task starts; the
        # row count itself is not sent (it could undercut the privacy threshold)
        len(accepted.datasource)
        await mailbox.send(MessageType.PREPARING_DATA, {})
        await mailbox.send(MessageType.CONFIGURING_TASK, {})
        if not accepted.protocol.handles_start:
            await mailbox.send(MessageType.NUM_BATCHES, {"count": 1})  # not batched
        if not accepted.protocol.handles_start:
            timeout = self.policy.start_timeout
            try:
                await mailbox.receive(MessageType.TASK_START, timeout=timeout)
            except ReceiveTimeoutError:  # as a task child's watchdog says it
                raise ModellerTimeoutError(
                    f"no TASK_START from the modeller within {timeout:.0f} s"
                ) from None
        context = WorkerContext(
            self.name,
            accepted.datasource,
            self.policy.min_rows,
            hooks=build_hooks(self.hooks),
            ledger=self.ledger,
            outputs=self.outputs,
        )
        return await accepted.protocol.serve_worker(mailbox, context)

    async def _run_in_child(
        self,
        request: Message,
        accepted: _Accepted,
        channel: _HeldChannel,
        mailbox: WorkerMailbox,
    ) -> Mapping[str, Any] | None:
        assert self.isolation is not None
        worker = WorkerProcess(
            WorkerConfig(
                task_id=request.task_id,
                pod=self.name,
                modeller=request.sender,
                protocol=accepted.protocol.dump(),
                datasource=accepted.datasource,
                min_rows=self.policy.min_rows,
                hooks=self.hooks,
                plugins=self.plugins,
                heartbeat_interval=self.isolation.heartbeat_interval,
                handles_start=accepted.protocol.handles_start,
                outputs=self.outputs,
                threads=self.isolation.thread_budget(self.policy.max_concurrent_tasks),
            ),
            self.isolation,
            ledger=self.ledger,
        )
        self.workers[request.task_id] = worker
        try:
            await mailbox.send(MessageType.PREPARING_DATA, {})
            await mailbox.send(MessageType.CONFIGURING_TASK, {})
            worker.start()  # the child rebuilds the worker while the modeller says go
            if not accepted.protocol.handles_start:
                await mailbox.send(MessageType.NUM_BATCHES, {"count": 1})  # not batched
            return await worker.run(channel, mailbox, self.policy.start_timeout)
        finally:
            await worker.stop()
            self.workers.pop(request.task_id, None)

    def _log_task(
        self, request: Message, protocol: str, outcome: str, *, level: int = logging.INFO
    ) -> None:
        """Log the one line a pod logs per task: who asked for what, on which data, and how.

        For example ``pod-a: task 3f2a9c1d from alice: fedavg on dataset default:
        completed in 4.2 s``. What the modeller sent is shown as text, bounded.
        """
        body = request.body if isinstance(request.body, dict) else {}
        logger.log(
            level,
            "%s: task %s from %s: %s on dataset %s: %s",
            self.name,
            _shown(request.task_id)[:8],
            _shown(request.sender),
            _shown(protocol),
            _shown(body.get("dataset", "?")),
            _shown(outcome, _OUTCOME_CHARACTERS),
        )

    def _record(
        self,
        request: Message,
        protocol: str,
        status: str,
        reason: str | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> None:
        if self.store is None:
            return
        try:
            self.store.record_task_run(
                request.task_id, request.sender, protocol, status, reason, result
            )
        except FedloomError as exc:
            logger.error("%s: could not record task %s: %s", self.name, request.task_id, exc)


def _shown(value: object, limit: int = 64) -> str:
    """``value`` (from the network) as a log line may show it: printable, bounded."""
    text = value if isinstance(value, str) else repr(value)
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def _while_heard(work: Coroutine[Any, Any, _T], channel: _HeldChannel, timeout: float) -> _T:
    """Run ``work`` while the modeller is heard from at least every ``timeout`` seconds.

    Raises:
        ModellerTimeoutError: it was not; ``work`` is cancelled (a task child is stopped).
    """
    task = asyncio.ensure_future(work)
    try:
        while True:
            # the loop clock, which times the wait below too (virtual in unit tests)
            left = timeout - (asyncio.get_running_loop().time() - channel.heard)
            if left <= 0:
                raise ModellerTimeoutError(f"no message from the modeller for {timeout:g} s")
            done, _ = await asyncio.wait({task}, timeout=left)
            if done:
                return task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})  # its clean-up (stopping a child) runs to the end
