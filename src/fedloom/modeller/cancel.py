"""Cancelling a task: TASK_CANCEL to its pods, and their acknowledgements.

DESIGN: the modeller may send TASK_CANCEL; the pod stops the task (its child process, or
its place in the queue) and answers TASK_ABORT(CANCELLED_BY_MODELLER). A cancelled
:meth:`~fedloom.modeller.Modeller.run` tells every pod that may hold the task, whatever
phase it was in, and waits a bounded time for those answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from fedloom.errors import AbortReason, ErrorReport, FedloomError
from fedloom.transport import ModellerMailbox
from fedloom.wire import MessageType

logger = logging.getLogger(__name__)

CANCEL_MESSAGE = "the modeller cancelled the task"


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
