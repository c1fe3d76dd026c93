"""A reply that is already here when a request's time is up is not late.

The modeller's event loop may be busy past a deadline (a progress callback, a blocking
import): the replies that arrived meanwhile wait on the task's channel and must count.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

from fedloom import RequestPolicy
from fedloom.session import ModellerMailbox, OnTimeout, WorkerMailbox
from fedloom.testing import connect_federation, virtual_loop
from fedloom.transport import MemoryHub, TaskRouter
from fedloom.wire import Message, MessageType

TASK = "task-1"
PODS = ["pod-a", "pod-b"]
POLICY = RequestPolicy(timeout=0.1, on_timeout=OnTimeout.STOP)


def busy(pod: str, kind: MessageType, body: Mapping[str, object]) -> None:
    virtual_loop().advance(0.3)  # holds the loop past the request's 0.1 s


async def with_pods(
    sends: list[tuple[MessageType, dict[str, Any]]], read: Any
) -> tuple[Any, ModellerMailbox]:
    """Each pod sends ``sends``; once they wait at the modeller, ``read(mailbox)`` runs."""
    hub = MemoryHub()
    routers = {name: TaskRouter(m) for name, m in connect_federation(hub, "modeller", PODS).items()}
    for router in routers.values():
        router.start()
    modeller = routers["modeller"]
    mailbox = ModellerMailbox(
        modeller, modeller.open_channel(TASK), PODS, on_progress=busy, policy=POLICY
    )
    try:
        for pod in PODS:
            worker = WorkerMailbox(routers[pod], routers[pod].open_channel(TASK), "modeller")
            for kind, body in sends:
                await worker.send(kind, body)
        while modeller._channels[TASK].qsize() < len(PODS) * len(sends):
            await asyncio.sleep(0.01)
        return await read(mailbox), mailbox
    finally:
        for router in routers.values():
            await router.close()
        await hub.close()


@pytest.mark.virtual_time
async def test_collect_reads_the_replies_queued_when_its_time_is_up() -> None:
    sends = [(MessageType.PROGRESS, {"step": 1}), (MessageType.RESULTS, {"ok": 1})]

    async def read(mailbox: ModellerMailbox) -> Any:
        return await mailbox.collect(MessageType.RESULTS, name="results")

    gathered, _ = await with_pods(sends, read)
    assert sorted(gathered.replies) == PODS
    assert gathered.missing == []


@pytest.mark.virtual_time
async def test_a_stream_reads_the_messages_queued_when_a_pods_time_is_up() -> None:
    sends = [
        (MessageType.PROGRESS, {"step": 1}),
        (MessageType.BATCHES_COMPLETE, {"stage": "TASK_COMPLETE"}),
    ]

    async def read(mailbox: ModellerMailbox) -> Any:
        def final(message: Message) -> bool:
            return message.type is MessageType.BATCHES_COMPLETE

        return [m.sender async for m in mailbox.collect_stream(final, name="batches")]

    streamed, mailbox = await with_pods(sends, read)
    assert sorted(streamed) == PODS
    assert mailbox.dropped == set() and mailbox.pods == PODS
