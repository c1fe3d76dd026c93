"""The child's ProxyMailbox against the pod's real broker, over a real link (an in-process
pipe, no processes): it must pass the Mailbox conformance suite, as sender and receiver."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from pathlib import Path

import pytest

from fedloom.errors import RouteRefusedError, UnknownRecipientError
from fedloom.protocols import StoreLedger
from fedloom.session import WorkerMailbox
from fedloom.testing import check_mailbox
from fedloom.transport import Mailbox, MemoryHub, TaskRouter
from fedloom.wire import Message, MessageType
from fedloom.worker._broker import LinkBroker
from fedloom.worker._child import ProxyMailbox
from fedloom.worker._ipc import Link

TASK = "task-1"


class ProxyPairs:
    """Builds (alice, bob) where one is a task child's proxy mailbox and the other its
    modeller: the proxy's link goes to a LinkBroker serving the pod's mailbox on a memory
    hub, the way a pod serves a spawned child."""

    def __init__(self, folder: Path, proxy: str) -> None:
        self._folder = folder
        self._proxy = proxy
        self._teardowns: list[tuple[Link, Link, asyncio.Task[object], TaskRouter]] = []

    async def __call__(self) -> tuple[Mailbox, Mailbox]:
        pod, modeller = ("alice", "bob") if self._proxy == "alice" else ("bob", "alice")
        hub = MemoryHub()
        modeller_mailbox = hub.connect(modeller, "modeller")
        router = TaskRouter(hub.connect(pod, "pod", accepts=[modeller]))
        router.start()
        channel = router.open_channel(TASK)
        pod_end, child_end = multiprocessing.Pipe(duplex=True)
        pod_link, child_link = Link(pod_end, self._folder), Link(child_end, self._folder)
        broker = LinkBroker(
            pod_link, threading.Event(), ledger=StoreLedger(None), handles_start=False
        )
        serving = asyncio.ensure_future(
            broker.serve(channel, WorkerMailbox(router, channel, modeller))
        )
        proxy = ProxyMailbox(pod, child_link, asyncio.get_running_loop())
        proxy.attach()
        self._teardowns.append((pod_link, child_link, serving, router))
        pair = (proxy, modeller_mailbox) if self._proxy == "alice" else (modeller_mailbox, proxy)
        return pair

    async def close(self) -> None:
        for pod_link, child_link, serving, router in self._teardowns:
            await asyncio.to_thread(child_link.put, "done", {"status": "completed"})
            assert await asyncio.wait_for(serving, 10) is None
            await asyncio.to_thread(pod_link.put, "stop")
            pod_link.close()
            child_link.close()
            await router.close()


@pytest.mark.parametrize("proxy", ["alice", "bob"])
async def test_the_proxy_mailbox_passes_the_conformance_suite(tmp_path: Path, proxy: str) -> None:
    pairs = ProxyPairs(tmp_path, proxy)
    try:
        await check_mailbox(pairs)
    finally:
        await pairs.close()


async def test_the_child_writes_only_to_its_modeller_under_its_task(tmp_path: Path) -> None:
    pairs = ProxyPairs(tmp_path, "alice")
    try:
        child, modeller = await pairs()
        other = Message(MessageType.PROGRESS, "", "bob", "another-task")
        with pytest.raises(RouteRefusedError):
            await child.send(other)
        with pytest.raises(UnknownRecipientError):
            await child.send(other.with_updates(recipient="carol", task_id=TASK))
        await child.send(other.with_updates(task_id=TASK))
        assert (await modeller.receive(timeout=5)).task_id == TASK
    finally:
        await pairs.close()
