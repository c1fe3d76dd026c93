"""The modeller's mailbox for one task: requests judged under the task's request policy.

Time-outs, ``stop_on_error``, ``require_all`` and ``min_replies`` decide the outcome of
one reply per pod (:meth:`ModellerMailbox.collect`) or of a stream of them
(:meth:`ModellerMailbox.collect_stream`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field

from fedloom.errors import (
    AbortReason,
    ErrorReport,
    PodFailure,
    PodResponseError,
    ReceiveTimeoutError,
    TransportError,
)
from fedloom.session._gather import (
    STATUS_TYPES,
    Gathered,
    ProgressCallback,
    _ModellerEnd,
    _now,
)
from fedloom.session._policy import OnTimeout, RequestPolicy
from fedloom.session._reports import report_of
from fedloom.transport._router import Channel, TaskRouter
from fedloom.wire import Message, MessageType

logger = logging.getLogger(__name__)


class ModellerMailbox(_ModellerEnd):
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
        super().__init__(router, channel, pods, on_progress=on_progress)
        self.refused: dict[str, ErrorReport] = {}
        """Pods that answered a request with a refusal (JOB_REJECT) or that the hub
        refused the task for, with why; they are not in :attr:`pods`."""
        self.policy = policy
        self.timings: dict[str, dict[str, float]] = {}
        self._requests = 0
        self._names: dict[str, int] = {}

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
            request: the request's name, as the log and the errors give it.
            failed: the asked pods that left the task (aborted, refused, dropped), with why.
            late: the pods that did not answer in time, with why; dropped (TASK_ABORT
                WORKER_UNRESPONSIVE, ``dropping`` saying why) unless ``on_timeout="stop"``.
            usable: the usable replies; with ``ended=False`` (a request still under way),
                the most it can still get once the late pods are gone.
            dropping: why the late pods are dropped, as each one's TASK_ABORT says.
            ended: whether the request is over (``False`` while pods still stream replies).

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

    async def collect_stream(
        self,
        finished: Callable[[Message], bool],
        *,
        usable: Callable[[Message], bool] | None = None,
        name: str | None = None,
        timeout: float | None = None,
    ) -> AsyncIterator[Message]:
        """One streamed request, judged under :attr:`policy`: each active pod's messages.

        They come as they arrive, until every pod has sent its last one or left the task.

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
