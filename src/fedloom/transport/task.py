"""The two task-scoped mailboxes protocols are written against.

:class:`ModellerMailbox` talks to the pods of one task (send, broadcast, gather with a
time-out, stream); :class:`WorkerMailbox` is the pod-side end of the same task. Neither
knows which transport carries it: both sit on a :class:`TaskRouter` over any ``Mailbox``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from fedloom.errors import (
    AbortReason,
    ErrorReport,
    ProtocolError,
    ReceiveTimeoutError,
    TaskAbortedError,
)
from fedloom.transport.router import Channel, TaskRouter
from fedloom.wire import Body, Message, MessageType

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[str, MessageType, Mapping[str, object]], None]
"""Called with (pod, message type, body) for every status message of a task."""

STATUS_TYPES = frozenset(
    {
        MessageType.PROGRESS,
        MessageType.PREPARING_DATA,
        MessageType.CONFIGURING_TASK,
        MessageType.HEARTBEAT,
    }
)
"""Messages that report a pod's state rather than answer a protocol step."""


def report_of(message: Message) -> ErrorReport:
    """The error report carried by a TASK_ABORT or JOB_REJECT (malformed → WORKER_ERROR)."""
    try:
        return ErrorReport.from_body(message.body)
    except ProtocolError as exc:
        return ErrorReport(AbortReason.WORKER_ERROR, str(exc), "ProtocolError", "")


@dataclass
class Gathered:
    """What :meth:`ModellerMailbox.gather` collected."""

    replies: dict[str, Message] = field(default_factory=dict)
    aborted: dict[str, ErrorReport] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


class ModellerMailbox:
    """The modeller's end of one task, with the pods that accepted it.

    Pods that send TASK_ABORT are dropped from :attr:`pods` and recorded in
    :attr:`aborted`; protocols decide whether they can go on without them.
    """

    def __init__(
        self,
        router: TaskRouter,
        channel: Channel,
        pods: Iterable[str],
        *,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        self._router = router
        self._channel = channel
        self.task_id = channel.task_id
        self.pods: list[str] = list(pods)
        self.aborted: dict[str, ErrorReport] = {}
        self._on_progress = on_progress
        self._pending: list[Message] = []

    async def send(
        self,
        pod: str,
        type: MessageType,
        body: Body = None,
        tensors: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Send one message of this task to ``pod``.

        Raises:
            TransportError: the message could not be delivered.
            WireError: the body or tensors cannot be encoded.
        """
        await self._router.send(
            Message(type, "", pod, self.task_id, body=body, tensors=dict(tensors or {}))
        )

    async def broadcast(
        self,
        type: MessageType,
        body: Body = None,
        tensors: Mapping[str, np.ndarray] | None = None,
        pods: Collection[str] | None = None,
    ) -> None:
        """Send the same message to ``pods`` (default: every active pod)."""
        for pod in self.pods if pods is None else pods:
            await self.send(pod, type, body, tensors)

    async def gather(
        self,
        type: MessageType | Collection[MessageType],
        pods: Collection[str] | None = None,
        timeout: float | None = None,
    ) -> Gathered:
        """One message of ``type`` (or of any of ``type``) from each of ``pods``.

        ``pods`` defaults to every active pod.

        Pods that abort are in ``aborted``; pods with no reply within ``timeout`` seconds
        are in ``missing``. Never raises for a pod's failure: the caller's policy decides.
        """
        wanted = set(self.pods if pods is None else pods) - set(self.aborted)
        types = frozenset({type} if isinstance(type, MessageType) else type)
        result = Gathered()
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        # messages kept back by an earlier call (a reply to a later step) come first
        backlog, self._pending = self._pending, []
        for message in backlog:
            self._take(message, types, wanted, result, start)
        while wanted:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                message = await self._channel.get(remaining)
            except ReceiveTimeoutError:
                break
            self._take(message, types, wanted, result, start)
        result.missing = sorted(wanted)
        return result

    def _take(
        self,
        message: Message,
        types: frozenset[MessageType],
        wanted: set[str],
        result: Gathered,
        start: float,
    ) -> None:
        pod = message.sender
        if message.type in STATUS_TYPES:
            self._progress(message)
        elif message.type is MessageType.TASK_ABORT:
            result.aborted[pod] = self._leave(pod, report_of(message))
            wanted.discard(pod)
        elif message.type in types and pod in wanted:
            result.replies[pod] = message
            result.seconds[pod] = time.monotonic() - start
            wanted.discard(pod)
        elif pod in self.pods:
            self._pending.append(message)
        else:
            logger.warning("ignoring %s from %r for task %s", message.type, pod, self.task_id)

    async def stream(self, timeout: float | None = None) -> AsyncIterator[Message]:
        """Yield this task's messages as they arrive (PROGRESS goes to the callback).

        Stops when no message arrives within ``timeout`` seconds.
        """
        backlog, self._pending = self._pending, []
        for message in backlog:
            yield message
        while True:
            try:
                message = await self._channel.get(timeout)
            except ReceiveTimeoutError:
                return
            if message.type in STATUS_TYPES:
                self._progress(message)
                continue
            if message.type is MessageType.TASK_ABORT:
                self._leave(message.sender, report_of(message))
            yield message

    def _leave(self, pod: str, report: ErrorReport) -> ErrorReport:
        """Record that ``pod`` left the task with ``report``; returns the report."""
        if pod in self.pods:
            self.pods.remove(pod)
        self.aborted[pod] = report
        return report

    def _progress(self, message: Message) -> None:
        if self._on_progress is not None:
            body = message.body if isinstance(message.body, dict) else {}
            self._on_progress(message.sender, message.type, body)

    async def drop(self, pod: str, reason: AbortReason, message: str) -> None:
        """Leave ``pod`` out of the rest of the task and tell it so with TASK_ABORT."""
        if pod in self.pods:
            self.pods.remove(pod)
        report = ErrorReport(reason, message, "", "")
        self.aborted.setdefault(pod, report)
        await self.send(pod, MessageType.TASK_ABORT, report.to_body())


class WorkerMailbox:
    """The pod-side end of one task."""

    def __init__(self, router: TaskRouter, channel: Channel, modeller: str) -> None:
        self._router = router
        self._channel = channel
        self.task_id = channel.task_id
        self.modeller = modeller

    async def send(
        self,
        type: MessageType,
        body: Body = None,
        tensors: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        """Send one message of this task to the modeller.

        Raises:
            TransportError: the message could not be delivered.
            WireError: the body or tensors cannot be encoded.
        """
        await self._router.send(
            Message(type, "", self.modeller, self.task_id, body=body, tensors=dict(tensors or {}))
        )

    async def progress(self, **fields: float | int | str) -> None:
        """Send a PROGRESS message (shown on the modeller's progress bar for this pod)."""
        await self.send(MessageType.PROGRESS, dict(fields))

    async def receive(
        self, types: MessageType | Collection[MessageType], timeout: float | None = None
    ) -> Message:
        """The modeller's next message, which must be one of ``types``.

        Raises:
            TaskAbortedError: the modeller cancelled or aborted the task.
            ProtocolError: the modeller sent a message of another type.
            ReceiveTimeoutError: nothing arrived within ``timeout`` seconds.
            MailboxClosedError: the pod's connection closed.
        """
        allowed = {types} if isinstance(types, MessageType) else set(types)
        while True:
            message = await self._channel.get(timeout)
            if message.sender != self.modeller:
                logger.warning(
                    "dropping %s from %r: not this task's modeller", message.type, message.sender
                )
                continue
            if message.type in allowed:
                return message
            if message.type is MessageType.TASK_CANCEL:
                raise TaskAbortedError(
                    AbortReason.CANCELLED_BY_MODELLER, "the modeller cancelled the task"
                )
            if message.type is MessageType.TASK_ABORT:
                report = report_of(message)
                raise TaskAbortedError(report.reason, report.message)
            names = ", ".join(sorted(t.value for t in allowed))
            raise ProtocolError(f"expected {names} from the modeller, got {message.type.value}")
