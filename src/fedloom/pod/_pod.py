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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedloom._events import EventCallback, EventKind, EventStream, Subscription
from fedloom._hooks import DEFAULT_WORKER_HOOKS, build_hooks
from fedloom.datasources import Datasource
from fedloom.errors import (
    AbortReason,
    ErrorReport,
    FedloomError,
    MailboxClosedError,
    ModellerTimeoutError,
    ReceiveTimeoutError,
    TaskAbortedError,
    TaskCancelledError,
)
from fedloom.pod._activity import PodActivity, PodStatistics
from fedloom.pod._liveness import _HeldChannel, _while_heard
from fedloom.pod._policy import PodPolicy, _Accepted, _decide
from fedloom.pod._slots import _Slots, _wait_for_slot
from fedloom.protocols import StoreLedger, WorkerContext
from fedloom.session import WorkerMailbox
from fedloom.store import PodStore
from fedloom.transport import Mailbox, TaskRouter
from fedloom.wire import Message, MessageType
from fedloom.worker import IsolationSettings, WorkerConfig, WorkerProcess

logger = logging.getLogger(__name__)

_OUTCOME_CHARACTERS = 300
"""How much of a task's outcome (an error message) its log line shows."""

_QUIET_AFTER_END = frozenset({MessageType.TASK_COMPLETE, MessageType.HEARTBEAT})
"""What a modeller may still send a task the pod has already ended (not worth a log line)."""


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
        what happens to its tasks (a new stream unless given; see :meth:`subscribe`).
        """
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
        and ``modeller``, the ends with ``seconds`` (see :class:`~fedloom._events.EventKind`).
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

    async def _on_job_request(self, router: TaskRouter, request: Message) -> None:
        reply = Message(MessageType.JOB_ACCEPT, self.name, request.sender, request.task_id)
        try:
            accepted = _decide(self.policy, self.name, self.datasets, self._tasks, request)
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
            await _wait_for_slot(self._slots, mailbox, channel)
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
