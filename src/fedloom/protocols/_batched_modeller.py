"""The modeller's side of the batched flow: wait for the pods, send the setup, collect.

See :mod:`fedloom.protocols._batched` for the flow. Each pod's messages go to the task's
:class:`~fedloom.protocols.BatchCollector` as they arrive; a pod whose message it rejects
as malformed is dropped from the task, and the others go on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedloom.errors import AbortReason, PodFailure, PodResponseError, ProtocolError
from fedloom.protocols._base import ModellerContext
from fedloom.protocols._batched_parts import FINISHED, NO_NEW_DATA, ResultT
from fedloom.session import ModellerMailbox
from fedloom.wire import Message, MessageType

if TYPE_CHECKING:
    from fedloom.protocols._batched import BatchedProtocol

READY_REQUEST = "ready"
"""The name of the ready step (each pod's TASK_START) in :attr:`TaskResult.timings`."""
BATCHES_REQUEST = "batches"
"""The name of the streamed batches (up to each pod's last BATCHES_COMPLETE) in timings."""


async def run_modeller(
    protocol: BatchedProtocol[Any, Any, ResultT], mailbox: ModellerMailbox, context: ModellerContext
) -> ResultT:
    """The modeller's side of ``protocol``'s task: its collector's result.

    Raises:
        PodResponseError: no pod is ready, or the request policy (or the collector's
            result) says the task failed.
    """
    await mailbox.collect(MessageType.TASK_START, name=READY_REQUEST, timeout=protocol.timeout)
    if not mailbox.pods:
        raise PodResponseError(f"{protocol.name}: no pod is ready", _failures(mailbox))
    await mailbox.broadcast(MessageType.TASK_START)
    setup = protocol.setup_values()
    await mailbox.broadcast(MessageType.MODEL_PARAMETERS, setup.body, setup.tensors)
    collector = protocol.collector(list(mailbox.pods))
    # one request under the task's policy: a pod silent for longer than the time-out
    # (per pod: another pod's messages do not keep it alive) is dropped or stops the
    # task; a pod whose batches' results reached the modeller counts for min_replies
    # even if it leaves before its final reduce step
    async for message in mailbox.collect_stream(
        _is_final,
        usable=_is_batch if protocol.releases_per_batch else None,
        name=BATCHES_REQUEST,
        timeout=protocol.timeout,
    ):
        pod = message.sender
        body = message.body if isinstance(message.body, dict) else {}
        try:
            if message.type is MessageType.EVALUATION_RESULTS:
                collector.on_batch(pod, body, message.tensors)
            elif _is_final(message) and body.get(NO_NEW_DATA) is True:
                collector.on_no_new_data(pod)
            elif _is_final(message):
                collector.on_finish(pod, body, message.tensors)
        except (ProtocolError, ValueError, TypeError) as exc:
            await mailbox.drop(
                pod, AbortReason.WORKER_ERROR, f"malformed {message.type.value}: {exc}"
            )
    aborted = {pod: why.text for pod, why in _failures(mailbox).items()}
    return collector.result(list(mailbox.pods), aborted)


def _is_batch(message: Message) -> bool:
    """A batch's results (EVALUATION_RESULTS), which left the pod with the batch."""
    return message.type is MessageType.EVALUATION_RESULTS


def _is_final(message: Message) -> bool:
    """A worker's last message of the stream: BATCHES_COMPLETE("TASK_COMPLETE")."""
    body = message.body if isinstance(message.body, dict) else {}
    return message.type is MessageType.BATCHES_COMPLETE and body.get("stage") == FINISHED


def _failures(mailbox: ModellerMailbox) -> dict[str, PodFailure]:
    return {pod: PodFailure.from_report(r) for pod, r in mailbox.aborted.items()}
