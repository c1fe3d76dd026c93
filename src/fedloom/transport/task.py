"""The two task-scoped mailboxes protocols are written against.

:class:`ModellerMailbox` talks to the pods of one task (send, broadcast, gather with a
time-out, collect under the task's request policy, stream); :class:`WorkerMailbox` is the
pod-side end of the same task. Neither knows which transport carries it: both sit on a
:class:`TaskRouter` over any ``Mailbox``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from fedloom.errors import (
    AbortReason,
    ErrorReport,
    FedloomError,
    PodFailure,
    PodResponseError,
    ProtocolError,
    ReceiveTimeoutError,
    TaskAbortedError,
    TaskCancelledError,
    TransportError,
)
from fedloom.session.policy import OnTimeout, RequestPolicy
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
        MessageType.NUM_BATCHES,
        MessageType.CURRENT_BATCH_ID,
    }
)
"""Messages that report a pod's state rather than answer a protocol step (they go to the
progress callback: batch counts and ids drive the per-pod progress bars)."""


def _now() -> float:
    """The running event loop's clock: its timers decide every time-out here, so reading
    the same clock keeps deadlines and measured seconds consistent (and lets a test run
    them in virtual time, :func:`fedloom.testing.run_in_virtual_time`)."""
    return asyncio.get_running_loop().time()


def report_of(message: Message) -> ErrorReport:
    """The error report carried by a TASK_ABORT or JOB_REJECT (malformed → WORKER_ERROR)."""
    try:
        return ErrorReport.from_body(message.body)
    except ProtocolError as exc:
        return ErrorReport(AbortReason.WORKER_ERROR, str(exc), "ProtocolError", "")


def failure_text(report: ErrorReport) -> str:
    """``"REASON: message"`` (or the bare reason) for a pod in ``PodResponseError``."""
    return PodFailure.from_report(report).text


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
    :attr:`aborted`; protocols decide whether they can go on without them. Pods the
    modeller leaves out itself (:meth:`drop`) are in :attr:`aborted` too, and in
    :attr:`dropped`; nothing they send afterwards is read. :meth:`collect` gathers one
    request's replies under :attr:`policy` and records each pod's answer time in
    :attr:`timings` (pod → request name → seconds).
    """

    def __init__(
        self,
        router: TaskRouter,
        channel: Channel,
        pods: Iterable[str],
        *,
        on_progress: ProgressCallback | None = None,
        policy: RequestPolicy | None = None,
    ) -> None:
        self._router = router
        self._channel = channel
        self.task_id = channel.task_id
        self.pods: list[str] = list(pods)
        self.aborted: dict[str, ErrorReport] = {}
        self.refused: dict[str, ErrorReport] = {}
        """Pods that answered a request with a refusal (JOB_REJECT) or that the hub
        refused the task for, with why; they are not in :attr:`pods`."""
        self.dropped: set[str] = set()
        self.policy = policy
        self.timings: dict[str, dict[str, float]] = {}
        self._on_progress = on_progress
        self._pending: list[Message] = []
        self._requests = 0
        self._names: dict[str, int] = {}

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

    async def collect(
        self,
        type: MessageType | Collection[MessageType],
        pods: Collection[str] | None = None,
        *,
        name: str | None = None,
        timeout: float | None = None,
        refusals: Collection[MessageType] = (),
    ) -> Gathered:
        """One request's replies, gathered and judged under :attr:`policy`.

        Args:
            type: the reply type(s) that answer the request.
            pods: the pods asked (default: every active pod).
            name: the request's name in :attr:`timings` (default ``request-N``); a name
                used before in this task gets a ``#2``, ``#3``, ... suffix.
            timeout: this request's own time-out, which wins over the policy's; ``None``
                uses the policy's (no policy: wait forever).
            refusals: reply types that answer but refuse (JOB_REJECT): they are in
                ``replies`` like the others, count as failures, and the pod leaves
                :attr:`pods`.

        Pods still silent at the time-out are dropped (TASK_ABORT with
        WORKER_UNRESPONSIVE: from the modeller's side, the pod stopped answering) unless
        the policy says ``on_timeout="stop"``. Without a policy nothing is raised: late
        pods are dropped and the protocol decides whether the replies are enough.

        Raises:
            PodResponseError: the policy stops the task: a pod rejected or aborted under
                ``stop_on_error``; pods were late under ``on_timeout="stop"``; a pod
                failed under ``require_all``; fewer usable replies than ``min_replies``.
                ``failed_pods`` names each failing pod with why.
            MailboxClosedError: the modeller's connection closed.
        """
        request = self._request_name(name)
        rules = self.policy
        if timeout is None and rules is not None:
            timeout = rules.timeout
        refusing = frozenset(refusals)
        types = frozenset({type} if isinstance(type, MessageType) else type) | refusing
        asked = list(self.pods if pods is None else pods)
        earlier = {pod: self.aborted[pod] for pod in asked if pod in self.aborted}
        stop_on_error = rules is not None and rules.stop_on_error

        def is_error(message: Message) -> bool:
            return message.type is MessageType.TASK_ABORT or message.type in refusing

        gathered = await self.gather(
            types, asked, timeout, stop_when=is_error if stop_on_error else None
        )
        for pod, seconds in gathered.seconds.items():
            self.timings.setdefault(pod, {})[request] = seconds
        errors = {
            pod: PodFailure.from_report(report)
            for pod, report in (earlier | gathered.aborted).items()
            if pod not in self.dropped
        }
        for pod, reply in gathered.replies.items():
            if reply.type in refusing:
                self.refused[pod] = report_of(reply)
                errors[pod] = PodFailure.from_report(self.refused[pod])
                if pod in self.pods:
                    self.pods.remove(pod)
        if stop_on_error and errors:
            raise PodResponseError(
                f"request {request!r} stopped at the first pod that failed (stop_on_error)",
                errors,
            )
        failed = errors | {
            pod: PodFailure.from_report(self.aborted[pod]) for pod in earlier if pod in self.dropped
        }
        waited = "forever" if timeout is None else f"{timeout:g} s"
        late = {pod: f"no answer within {waited}" for pod in gathered.missing}
        usable = sum(1 for reply in gathered.replies.values() if reply.type not in refusing)
        await self._judge(
            request,
            failed,
            late,
            usable,
            dropping=f"no answer to request {request!r} within {waited}",
        )
        return gathered

    async def _judge(
        self,
        request: str,
        failed: Mapping[str, PodFailure | str],
        late: Mapping[str, str],
        usable: int,
        *,
        dropping: str,
        ended: bool = True,
    ) -> None:
        """Apply :attr:`policy` to one request's outcome: drop the late pods, or stop the task.

        Args:
            failed: the asked pods that left the task (aborted, refused, dropped), with why.
            late: the pods that did not answer in time, with why; dropped (TASK_ABORT
                WORKER_UNRESPONSIVE, ``dropping`` saying why) unless ``on_timeout="stop"``.
            usable: the usable replies; with ``ended=False`` (a request still under way),
                the most it can still get once the late pods are gone.

        Without a policy only the late pods are dropped; nothing is raised.

        Raises:
            PodResponseError: pods were late under ``on_timeout="stop"``; a pod failed under
                ``require_all``; fewer usable replies than ``min_replies``.
        """
        rules = self.policy
        if late and rules is not None and rules.on_timeout is OnTimeout.STOP:
            raise PodResponseError(
                f"request {request!r} timed out (on_timeout='stop'); give the pods a longer "
                "time-out or use on_timeout='discard' to go on without them",
                {**failed, **late},
            )
        for pod in late:
            logger.warning("dropping pod %r from request %r: %s", pod, request, late[pod])
            try:
                await self.drop(
                    pod,
                    AbortReason.WORKER_UNRESPONSIVE,
                    f"{dropping}: the modeller left this pod out of the task",
                )
            except TransportError as exc:  # it is out of the task either way
                logger.warning("could not tell pod %r it was dropped: %s", pod, exc)
        if rules is None:
            return
        failed = {**failed, **late}
        if rules.require_all and failed:
            raise PodResponseError(
                f"request {request!r}: not every pod answered (require_all)", failed
            )
        if usable < rules.min_replies:
            replies = f"{usable} usable repl{'y' if usable == 1 else 'ies'}"
            outcome = f"got {replies}" if ended else f"can get at most {replies}"
            # the pods that left before this request are part of why: say what they said
            gone = {
                pod: PodFailure.from_report(report)
                for pod, report in (self.refused | self.aborted).items()
                if pod not in failed
            }
            raise PodResponseError(
                f"request {request!r} {outcome}; "
                f"the request policy needs at least {rules.min_replies}",
                gone | failed,
            )

    def _request_name(self, name: str | None) -> str:
        self._requests += 1
        base = name or f"request-{self._requests}"
        count = self._names[base] = self._names.get(base, 0) + 1
        return base if count == 1 else f"{base}#{count}"

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

    async def collect_stream(
        self,
        finished: Callable[[Message], bool],
        *,
        usable: Callable[[Message], bool] | None = None,
        name: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Message]:
        """One streamed request, judged under :attr:`policy`: each active pod's messages as
        they arrive, until every pod has sent its last one or left the task.

        A pod has answered once it sent a message for which ``finished`` is true (asked
        before the message is yielded); the stream then ends by itself. Iterate it to the
        end: the request is judged when it ends. Status messages go to the progress
        callback; TASK_ABORT is yielded after the pod has left :attr:`pods`.

        Args:
            finished: whether a message is its pod's last one of this request.
            usable: whether a message before the last one already is a usable (partial)
                reply of its pod, one that counts for ``min_replies`` even if the pod leaves
                before it finishes (a batch's results that left the pod with the batch).
                Default: only its last message makes a pod's reply usable. A message the
                caller drops the pod for (:meth:`drop`, e.g. malformed) does not count.
            name: the request's name in :attr:`timings` (each pod's seconds to its last
                message), as in :meth:`collect`.
            timeout: this request's own time-out, which wins over the policy's; ``None``
                uses the policy's (no policy: wait forever).

        The time-out is per pod and counts silence: every message of a pod (status
        messages too) restarts its timer, and no other pod's messages do; a pod with a
        message waiting to be read is not silent. A pod silent for longer is late, judged
        as in :meth:`collect`: dropped (TASK_ABORT with WORKER_UNRESPONSIVE) while the
        others go on, unless ``on_timeout="stop"``. The policy is applied as soon as a pod
        fails, not only at the end: ``require_all`` stops at the first pod that leaves,
        ``min_replies`` once too few pods have given or can still give a usable reply. A
        pod the caller drops has failed too; ``stop_on_error`` ignores it, as
        :meth:`collect` does.

        Raises:
            PodResponseError: the policy stops the task (see :meth:`collect`); ``failed_pods``
                names each failing pod with why.
            MailboxClosedError: the modeller's connection closed.
        """
        request = self._request_name(name)
        rules = self.policy
        if timeout is None and rules is not None:
            timeout = rules.timeout
        waited = "forever" if timeout is None else f"{timeout:g} s"
        stream = _Stream(list(self.pods), _now())
        backlog: deque[Message] = deque(self._pending)
        self._pending = []
        try:
            while True:
                await self._drain(backlog)
                waiting = stream.waiting(self.pods)
                now = _now()
                queued = {message.sender for message in backlog}  # here: not silent
                late = {
                    pod: f"no message for {waited}"
                    for pod in waiting
                    if timeout is not None
                    and pod not in queued
                    and now - stream.heard[pod] >= timeout
                }
                await self._judge_stream(request, stream, late, waiting, waited)
                if late:
                    continue  # dropped: judge what is left
                if not waiting:
                    return
                message = await self._next_streamed(
                    backlog, [stream.heard[pod] for pod in waiting], timeout
                )
                if message is None or not self._file_streamed(message, stream.heard):
                    continue
                pod = message.sender
                replied = message.type is not MessageType.TASK_ABORT and pod in waiting
                last = replied and finished(message)
                if last:
                    stream.done.add(pod)
                    self.timings.setdefault(pod, {})[request] = _now() - stream.start
                counted = replied and (last or (usable is not None and usable(message)))
                yield message
                if counted and pod not in self.dropped:  # the caller kept it
                    stream.usable.add(pod)
        finally:
            self._pending[:0] = list(backlog)

    async def _judge_stream(
        self,
        request: str,
        stream: _Stream,
        late: Mapping[str, str],
        waiting: list[str],
        waited: str,
    ) -> None:
        """:meth:`collect_stream`'s policy, applied to where the stream stands now."""
        left = {
            pod: PodFailure.from_report(self.aborted[pod])
            for pod in stream.asked
            if pod in self.aborted
        }
        errors = {pod: why for pod, why in left.items() if pod not in self.dropped}
        if self.policy is not None and self.policy.stop_on_error and errors:
            raise PodResponseError(
                f"request {request!r} stopped at the first pod that failed (stop_on_error)",
                errors,
            )
        # the pods with a usable reply, and (while it runs) those still streaming theirs
        streaming = {pod for pod in waiting if pod not in late}
        await self._judge(
            request,
            left,
            late,
            len(stream.usable | streaming),
            dropping=f"no message in request {request!r} for {waited}",
            ended=not streaming,
        )

    async def _drain(self, backlog: deque[Message]) -> None:
        """Move the messages already queued on the channel to ``backlog`` (none awaited)."""
        while self._channel.qsize() > 0:
            backlog.append(await self._channel.get())

    async def _next_streamed(
        self, backlog: deque[Message], heard: list[float], timeout: float | None
    ) -> Message | None:
        """The next message of a stream; None once the first waiting pod's time is up."""
        if backlog:
            return backlog.popleft()
        remaining = None
        if timeout is not None:
            remaining = max(0.0, min(heard) + timeout - _now())
        try:
            return await self._channel.get(self._read_timeout(remaining))
        except ReceiveTimeoutError:
            return None

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

    def _file_streamed(self, message: Message, heard: dict[str, float]) -> bool:
        """Note a streamed message; True when it is one to yield (not status, not stray)."""
        pod = message.sender
        if pod in self.dropped:
            return False
        if pod in heard:
            heard[pod] = _now()
        if message.type in STATUS_TYPES:
            self._progress(message)
            return False
        if pod not in self.pods:
            logger.warning("ignoring %s from %r for task %s", message.type, pod, self.task_id)
            return False
        if message.type is MessageType.TASK_ABORT:
            self._leave(pod, report_of(message))
        return True

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


@dataclass
class _Stream:
    """Where one :meth:`ModellerMailbox.collect_stream` stands."""

    asked: list[str]
    start: float
    heard: dict[str, float] = field(default_factory=dict)
    """Pod → when it was last heard from (the start, before its first message)."""
    done: set[str] = field(default_factory=set)
    """The pods that sent their last message."""
    usable: set[str] = field(default_factory=set)
    """The pods that sent a usable reply (partial or last) the caller kept."""

    def __post_init__(self) -> None:
        self.heard = dict.fromkeys(self.asked, self.start)

    def waiting(self, active: Collection[str]) -> list[str]:
        """The asked pods still in the task that have not sent their last message."""
        return [pod for pod in self.asked if pod in active and pod not in self.done]


def _stops(stop_when: Callable[[Message], bool] | None, message: Message) -> bool:
    return stop_when is not None and stop_when(message)


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
    ) -> Message:
        """Send one message of this task to the modeller; returns it as sent.

        Raises:
            TransportError: the message could not be delivered.
            WireError: the body or tensors cannot be encoded.
        """
        return await self._router.send(
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
                raise TaskCancelledError()
            if message.type is MessageType.TASK_ABORT:
                report = report_of(message)
                raise TaskAbortedError(report.reason, report.message)
            names = ", ".join(sorted(t.value for t in allowed))
            raise ProtocolError(f"expected {names} from the modeller, got {message.type.value}")
