"""The pod: holds datasets, decides which tasks it accepts, runs them, keeps results.

A pod serves one :class:`~fedloom.transport.Mailbox`. For every JOB_REQUEST it checks its
:class:`PodPolicy` (modeller, protocol, dataset), answers JOB_ACCEPT or JOB_REJECT with a
typed reason, and runs each accepted task's worker side until TASK_COMPLETE. A task that
fails for any reason ends with TASK_ABORT to the modeller and an ``aborted`` row in the
pod's store; the pod itself keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fedloom.datasources import Datasource
from fedloom.errors import (
    AbortReason,
    AccessDeniedError,
    ConfigError,
    DatasetNotFoundError,
    ErrorReport,
    FedloomError,
    MailboxClosedError,
    TaskAbortedError,
)
from fedloom.protocols import DEFAULT_MIN_ROWS, Protocol, WorkerContext, load_protocol
from fedloom.store import PodStore
from fedloom.transport import Mailbox, TaskRouter, WorkerMailbox
from fedloom.wire import Message, MessageType

logger = logging.getLogger(__name__)

DEFAULT_START_TIMEOUT = 300.0
"""Seconds an accepted task waits for the modeller's TASK_START before giving up."""


@dataclass(frozen=True)
class PodPolicy:
    """What a pod accepts. ``None`` means "any" for the allow-lists."""

    allowed_protocols: frozenset[str] | None = None
    allowed_modellers: frozenset[str] | None = None
    min_rows: int = DEFAULT_MIN_ROWS
    start_timeout: float = DEFAULT_START_TIMEOUT

    def __post_init__(self) -> None:
        if (
            isinstance(self.min_rows, bool)
            or not isinstance(self.min_rows, int)
            or self.min_rows < 1
        ):
            raise ConfigError(f"PodPolicy.min_rows must be an integer >= 1, got {self.min_rows!r}")
        if not self.start_timeout > 0:
            raise ConfigError("PodPolicy.start_timeout must be > 0")


@dataclass(frozen=True)
class _Accepted:
    protocol: Protocol
    datasource: Datasource


class Pod:
    """A data owner's node; see the module docstring."""

    def __init__(
        self,
        name: str,
        datasets: Mapping[str, Datasource],
        *,
        policy: PodPolicy | None = None,
        store: PodStore | None = None,
    ) -> None:
        self.name = name
        self.datasets = dict(datasets)
        self.policy = policy or PodPolicy()
        self.store = store
        self._tasks: dict[str, asyncio.Task[None]] = {}

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
                elif message.type is not MessageType.TASK_COMPLETE:
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
            await router.close()

    def running_tasks(self) -> list[str]:
        return sorted(self._tasks)

    def _decide(self, message: Message) -> _Accepted:
        policy = self.policy
        if policy.allowed_modellers is not None and message.sender not in policy.allowed_modellers:
            raise AccessDeniedError(f"modeller {message.sender!r} is not allowed on this pod")
        body = message.body
        if not isinstance(body, dict) or not isinstance(body.get("dataset"), str):
            raise ConfigError('a JOB_REQUEST body must be {"task": {...}, "dataset": "<name>"}')
        protocol = load_protocol(body.get("task"))
        if policy.allowed_protocols is not None and protocol.name not in policy.allowed_protocols:
            raise AccessDeniedError(f"protocol {protocol.name!r} is not allowed on this pod")
        datasource = self.datasets.get(body["dataset"])
        if datasource is None:
            raise DatasetNotFoundError(
                f"pod {self.name!r} has no dataset {body['dataset']!r}; "
                f"it has: {sorted(self.datasets) or 'none'}"
            )
        if message.task_id in self._tasks:
            raise ConfigError(f"task {message.task_id!r} is already running on this pod")
        return _Accepted(protocol, datasource)

    async def _on_job_request(self, router: TaskRouter, request: Message) -> None:
        reply = Message(MessageType.JOB_ACCEPT, self.name, request.sender, request.task_id)
        try:
            accepted = self._decide(request)
        except FedloomError as exc:
            report = ErrorReport.from_exception(exc)
            logger.info("%s: rejecting task %s: %s", self.name, request.task_id, report.message)
            await router.send(
                reply.with_updates(type=MessageType.JOB_REJECT, body=report.to_body())
            )
            task = request.body.get("task") if isinstance(request.body, dict) else None
            requested = task.get("protocol") if isinstance(task, dict) else None
            protocol = requested[:64] if isinstance(requested, str) and requested else "?"
            self._record(request, protocol, "rejected", report.reason.value)
            return
        channel = router.open_channel(request.task_id)
        await router.send(reply)
        self._record(request, accepted.protocol.name, "accepted")
        mailbox = WorkerMailbox(router, channel, request.sender)
        self._tasks[request.task_id] = asyncio.get_running_loop().create_task(
            self._run_task(router, mailbox, request, accepted),
            name=f"{self.name}:{request.task_id}",
        )

    async def _run_task(
        self, router: TaskRouter, mailbox: WorkerMailbox, request: Message, accepted: _Accepted
    ) -> None:
        name = accepted.protocol.name
        try:
            # loading the data now makes a broken dataset abort before the task starts; the
            # row count itself is not sent (it could undercut the privacy threshold)
            len(accepted.datasource)
            await mailbox.send(MessageType.PREPARING_DATA, {})
            await mailbox.receive(MessageType.TASK_START, timeout=self.policy.start_timeout)
            context = WorkerContext(self.name, accepted.datasource, self.policy.min_rows)
            released = await accepted.protocol.run_worker(mailbox, context)
            self._record(request, name, "completed", result=released)
        except TaskAbortedError as exc:
            self._record(request, name, "aborted", exc.reason.value)
        except MailboxClosedError:
            self._record(request, name, "aborted", AbortReason.WORKER_UNRESPONSIVE.value)
        except asyncio.CancelledError:
            self._record(request, name, "aborted", AbortReason.CANCELLED_BY_MODELLER.value)
            raise
        except Exception as exc:  # a task must never take the pod down
            report = ErrorReport.from_exception(exc)
            logger.warning("%s: task %s failed: %s", self.name, request.task_id, report.message)
            with contextlib.suppress(FedloomError):
                await mailbox.send(MessageType.TASK_ABORT, report.to_body())
            self._record(request, name, "aborted", report.reason.value)
        finally:
            router.close_channel(request.task_id)
            self._tasks.pop(request.task_id, None)

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
