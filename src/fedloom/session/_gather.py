"""The modeller's end of one task without its request policy.

Send, broadcast, gather with a time-out, stream, and drop a pod.
:class:`fedloom.session._modeller_end.ModellerMailbox` builds the policed requests
(collect, collect_stream) on this base; only that class is meant to be used.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from fedloom.errors import (
    AbortReason,
    ErrorReport,
    FedloomError,
    ReceiveTimeoutError,
)
from fedloom.session._reports import report_of
from fedloom.transport._router import Channel, TaskRouter
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
        MessageType.NUM_BATCHES,
        MessageType.CURRENT_BATCH_ID,
    }
)
"""Messages that report a pod's state rather than answer a protocol step (they go to the
progress callback: batch counts and ids drive the per-pod progress bars)."""


def _now() -> float:
    """The running event loop's clock: its timers decide every time-out here.

    Reading the same clock keeps deadlines and measured seconds consistent (and lets a test
    run them in virtual time, :func:`fedloom.testing.run_in_virtual_time`).
    """
    return asyncio.get_running_loop().time()


@dataclass
class Gathered:
    """What :meth:`ModellerMailbox.gather` collected."""

    replies: dict[str, Message] = field(default_factory=dict)
    aborted: dict[str, ErrorReport] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


class _ModellerEnd:
    """The pods of one task as the modeller sees them: who is still in, who left and why.

    Pods that send TASK_ABORT leave :attr:`pods` for :attr:`aborted`; pods the modeller
    leaves out itself (:meth:`drop`) are in :attr:`aborted` and :attr:`dropped`.
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
        self.dropped: set[str] = set()
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
        """Send the same message to ``pods`` (default: every active pod).

        The sends run concurrently (a remote mailbox seals the next one while the hub stores
        the last); every send is awaited before the first error, if any, is raised.
        """
        targets = list(self.pods if pods is None else pods)
        outcomes = await asyncio.gather(
            *(self.send(pod, type, body, tensors) for pod in targets), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def gather(
        self,
        type: MessageType | Collection[MessageType],
        pods: Collection[str] | None = None,
        timeout: float | None = None,
        *,
        stop_when: Callable[[Message], bool] | None = None,
    ) -> Gathered:
        """One message of ``type`` (or of any of ``type``) from each of ``pods``.

        ``pods`` defaults to every active pod.

        Pods that abort are in ``aborted``; pods with no reply within ``timeout`` seconds
        are in ``missing``. ``stop_when`` ends the gather early, right after a reply or
        abort for which it is true (the pods not heard from yet are then in ``missing``).
        Never raises for a pod's failure: the caller's policy decides (see :meth:`collect`).
        A gather that is cancelled (or fails) keeps the replies it had read for the next
        call, so a caller that gives up still sees who answered.
        """
        wanted = set(self.pods if pods is None else pods) - set(self.aborted)
        types = frozenset({type} if isinstance(type, MessageType) else type)
        result = Gathered()
        start = _now()
        deadline = None if timeout is None else start + timeout
        # messages kept back by an earlier call (a reply to a later step) come first
        backlog, self._pending = self._pending, []
        stopped = False
        for index, message in enumerate(backlog):
            if self._take(message, types, wanted, result, start) and _stops(stop_when, message):
                self._pending += backlog[index + 1 :]
                stopped = True
                break
        try:
            while wanted and not stopped:
                remaining = None if deadline is None else max(0.0, deadline - _now())
                try:
                    message = await self._channel.get(self._read_timeout(remaining))
                except ReceiveTimeoutError:
                    break
                stopped = self._take(message, types, wanted, result, start) and _stops(
                    stop_when, message
                )
        except BaseException:
            self._pending[:0] = list(result.replies.values())
            raise
        result.missing = sorted(wanted)
        return result

    def _take(
        self,
        message: Message,
        types: frozenset[MessageType],
        wanted: set[str],
        result: Gathered,
        start: float,
    ) -> bool:
        """File ``message``; True when it answered (or aborted) this gather."""
        pod = message.sender
        if pod in self.dropped:
            # the pod was told it is out of the task; a late reply must not count
            logger.info("ignoring %s from dropped pod %r", message.type, pod)
            return False
        if message.type in STATUS_TYPES:
            self._progress(message)
            return False
        if message.type is MessageType.TASK_ABORT and (pod in self.pods or pod in wanted):
            result.aborted[pod] = self._leave(pod, report_of(message))
            wanted.discard(pod)
            return True
        if message.type in types and pod in wanted:
            result.replies[pod] = message
            result.seconds[pod] = _now() - start
            wanted.discard(pod)
            return True
        if pod in self.pods:
            self._pending.append(message)
        else:
            logger.warning("ignoring %s from %r for task %s", message.type, pod, self.task_id)
        return False

    def _read_timeout(self, remaining: float | None) -> float | None:
        """The time-out to read the channel with when ``remaining`` seconds are left.

        A message already queued is read even once the time is up (the event loop may have
        been busy past the deadline while it waited): a reply that is here is not late.
        ``asyncio.wait_for`` with no time left never returns a queued item, so a queued
        message is read without a time-out (it returns at once).
        """
        if remaining is not None and remaining <= 0 and self._channel.qsize() > 0:
            return None
        return remaining

    async def stream(self, timeout: float | None = None) -> AsyncIterator[Message]:
        """Yield this task's messages as they arrive (PROGRESS goes to the callback).

        Stops when no message arrives within ``timeout`` seconds.
        """
        backlog, self._pending = self._pending, []
        for message in backlog:
            if message.sender not in self.dropped:
                yield message
        while True:
            try:
                message = await self._channel.get(timeout)
            except ReceiveTimeoutError:
                return
            if message.sender in self.dropped:
                continue
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
        """Leave ``pod`` out of the rest of the task and tell it so with TASK_ABORT.

        The pod is recorded in :attr:`aborted` and :attr:`dropped`; whatever it sends
        afterwards is ignored.

        Telling the pod is best effort: if the TASK_ABORT cannot be delivered (the hub
        refuses it, the connection is gone) that is logged, and the pod is dropped anyway.
        """
        if pod in self.pods:
            self.pods.remove(pod)
        report = ErrorReport(reason, message, "", "")
        self.aborted.setdefault(pod, report)
        self.dropped.add(pod)
        try:
            await self.send(pod, MessageType.TASK_ABORT, report.to_body())
        except FedloomError as exc:
            logger.warning(
                "could not tell %r it was dropped from task %s: %s", pod, self.task_id, exc
            )


def _stops(stop_when: Callable[[Message], bool] | None, message: Message) -> bool:
    return stop_when is not None and stop_when(message)
