"""Stopping a task: TASK_CANCEL to its pods and their acknowledgements, or TASK_ABORT.

DESIGN: the modeller may send TASK_CANCEL; the pod stops the task (its child process, or
its place in the queue) and answers TASK_ABORT(CANCELLED_BY_MODELLER). A cancelled
:meth:`~fedloom.modeller.Modeller.run` tells every pod that may hold the task, whatever
phase it was in, and waits a bounded time for those answers. A task that cannot start,
or whose modeller side failed, is ended with TASK_ABORT to its pods instead, as boundedly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from fedloom.errors import AbortReason, ErrorReport, FedloomError, PodResponseError
from fedloom.session import ModellerMailbox
from fedloom.wire import MessageType

logger = logging.getLogger(__name__)

CANCEL_MESSAGE = "the modeller cancelled the task"

TELL_PODS_SECONDS = 5.0
"""How long a stopping modeller tries to tell the pods before it gives up: to send
TASK_ABORT when it failed, or to send TASK_CANCEL and hear each pod's answer when it was
cancelled."""


@dataclass(frozen=True)
class TaskCancellation:
    """What cancelling one task told its pods (see :meth:`fedloom.Modeller.cancel`).

    Attributes:
        task_id: the cancelled task.
        acknowledged: pod → the TASK_ABORT it answered with: CANCELLED_BY_MODELLER once
            it stopped the task (its child is gone, its slot free); another reason if the
            task had failed there meanwhile.
        unanswered: the pods that may hold the task but did not answer in time, or could
            not be told (the hub refused the TASK_CANCEL, the connection was gone). A pod
            that rejected the task meanwhile is in neither.
    """

    task_id: str
    acknowledged: dict[str, ErrorReport] = field(default_factory=dict)
    unanswered: list[str] = field(default_factory=list)


async def cancel_pods(
    mailbox: ModellerMailbox, pods: Sequence[str], seconds: float
) -> TaskCancellation:
    """Send TASK_CANCEL to ``pods`` and gather their answers, within ``seconds`` in all.

    Never raises: what could not be done is in :attr:`TaskCancellation.unanswered`. A
    cancellation of the caller while this runs ends it early, with what it has so far.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    body = ErrorReport(AbortReason.CANCELLED_BY_MODELLER, CANCEL_MESSAGE, "", "").to_body()
    sends = {
        pod: asyncio.ensure_future(mailbox.send(pod, MessageType.TASK_CANCEL, body)) for pod in pods
    }
    acknowledged: dict[str, ErrorReport] = {}
    rejected: set[str] = set()
    try:
        if sends:
            await asyncio.wait(sends.values(), timeout=seconds)
        told = [pod for pod, send in sends.items() if _maybe_sent(send)]
        # a pod that had not answered the JOB_REQUEST yet may still reject the task
        gathered = await mailbox.gather(
            MessageType.JOB_REJECT, told, max(0.0, deadline - loop.time())
        )
        acknowledged = dict(gathered.aborted)
        rejected = set(gathered.replies)
    except (FedloomError, asyncio.CancelledError) as exc:  # bounded and best effort
        logger.warning("task %s: could not wait for the pods to stop: %r", mailbox.task_id, exc)
    finally:
        for send in sends.values():
            send.cancel()
        for send in sends.values():  # retrieve their outcomes: nothing left unawaited
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await send
    unanswered = sorted(set(pods) - set(acknowledged) - rejected)
    cancellation = TaskCancellation(mailbox.task_id, acknowledged, unanswered)
    _log(cancellation)
    return cancellation


def _maybe_sent(send: asyncio.Future[None]) -> bool:
    """True unless the send failed: one still in flight at the deadline may have arrived."""
    return not send.done() or (not send.cancelled() and send.exception() is None)


def _log(cancellation: TaskCancellation) -> None:
    stopped = sorted(cancellation.acknowledged)
    if cancellation.unanswered:
        logger.warning(
            "task %s cancelled; pods that stopped it: %s; no answer from: %s",
            cancellation.task_id,
            stopped or "none",
            cancellation.unanswered,
        )
    else:
        logger.info("task %s cancelled; pods that stopped it: %s", cancellation.task_id, stopped)


async def _cancel(mailbox: ModellerMailbox, message: str) -> None:
    """Tell the task's pods with TASK_ABORT(CANCELLED_BY_MODELLER) that it will not start."""
    report = ErrorReport(AbortReason.CANCELLED_BY_MODELLER, message, "", "")
    # the task fails either way; the caller's error says why, not the delivery
    with contextlib.suppress(FedloomError, TimeoutError):
        await asyncio.wait_for(
            mailbox.broadcast(MessageType.TASK_ABORT, report.to_body()), TELL_PODS_SECONDS
        )


async def _abort(mailbox: ModellerMailbox, error: BaseException) -> None:
    """Tell the task's pods with TASK_ABORT that the modeller side failed with ``error``."""
    if isinstance(error, PodResponseError):
        # its text names the other pods and why they failed: not for every pod to read
        report = ErrorReport(
            AbortReason.CANCELLED_BY_MODELLER,
            "the modeller stopped the task: pods failed its request policy",
            type(error).__name__,
            "",
        )
    else:
        report = ErrorReport.from_exception(error, AbortReason.CANCELLED_BY_MODELLER)
    # bounded: a modeller asked to stop must stop even if the hub is slow to answer
    with contextlib.suppress(FedloomError, asyncio.CancelledError, TimeoutError):
        await asyncio.wait_for(
            mailbox.broadcast(MessageType.TASK_ABORT, report.to_body()), TELL_PODS_SECONDS
        )
