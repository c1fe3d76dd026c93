"""The in-memory transport: Mailbox conformance, routing, and the task mailboxes."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import numpy as np
import pytest

from fedloom.errors import (
    AbortReason,
    ConfigError,
    ErrorReport,
    MailboxClosedError,
    ProtocolError,
    RouteRefusedError,
    TaskAbortedError,
)
from fedloom.session import ModellerMailbox, WorkerMailbox
from fedloom.testing import check_hub, check_mailbox, connect_federation
from fedloom.transport import (
    Channel,
    Endpoint,
    Hub,
    MemoryHub,
    Role,
    TaskRouter,
    check_route,
)
from fedloom.transport import _memory as memory
from fedloom.wire import Message, MessageType


async def memory_pair() -> tuple[object, object]:
    hub = MemoryHub()
    return hub.connect("alice", "modeller"), hub.connect("bob", "pod", accepts=["alice"])


async def memory_hub(identities: Mapping[str, Role]) -> Hub:
    return MemoryHub()


async def test_memory_hub_passes_the_hub_contract() -> None:
    await check_hub(memory_hub)


async def test_hub_suite_catches_a_hub_that_routes_anything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The in-memory hub as it was: every route carried."""
    monkeypatch.setattr(memory, "check_route", lambda sender, recipient: None)
    with pytest.raises(AssertionError, match="refuses_pod_to_pod"):
        await check_hub(memory_hub)


async def test_hub_suite_catches_a_hub_that_lets_any_modeller_reach_a_pod(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def roles_only(sender: Endpoint, recipient: Endpoint) -> None:
        if sender.role == recipient.role:
            raise RouteRefusedError("same role")

    monkeypatch.setattr(memory, "check_route", roles_only)
    with pytest.raises(AssertionError, match="refuses_an_unaccepted_modeller"):
        await check_hub(memory_hub)


async def test_hub_suite_catches_a_hub_that_refuses_too_much(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refuses_all(sender: Endpoint, recipient: Endpoint) -> None:
        raise RouteRefusedError("nothing is carried")

    monkeypatch.setattr(memory, "check_route", refuses_all)
    with pytest.raises(AssertionError, match="carries_accepted_routes: RouteRefusedError"):
        await check_hub(memory_hub)


def test_memory_hub_refuses_bad_roles_and_accepts_lists() -> None:
    hub = MemoryHub()
    with pytest.raises(ConfigError, match="role"):
        hub.connect("x", "admin")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="must list the modellers"):
        hub.connect("pod-a", "pod")
    with pytest.raises(ConfigError, match="only a pod"):
        hub.connect("modeller", "modeller", accepts=["pod-a"])
    assert hub.identities() == []


def test_one_routing_rule_for_every_pair() -> None:
    modeller = Endpoint("m", "modeller")
    pod = Endpoint("p", "pod", frozenset({"m"}))
    check_route(modeller, pod)
    check_route(pod, modeller)
    check_route(Endpoint("other", "modeller"), Endpoint("new-pod", "pod"))  # list not known yet
    for sender, recipient in (
        (pod, Endpoint("q", "pod", frozenset({"m"}))),
        (modeller, Endpoint("m2", "modeller")),
        (Endpoint("other", "modeller"), pod),
        (pod, Endpoint("other", "modeller")),
    ):
        with pytest.raises(RouteRefusedError):
            check_route(sender, recipient)


async def test_memory_mailbox_passes_the_conformance_suite() -> None:
    await check_mailbox(memory_pair)  # type: ignore[arg-type]


async def test_conformance_suite_catches_a_broken_mailbox() -> None:
    class ReordersMessages:
        """A mailbox that delivers in reverse order: the suite must notice."""

        def __init__(self, inner: object) -> None:
            self._inner = inner
            self._buffer: list[Message] = []

        def __getattr__(self, name: str) -> object:
            return getattr(self._inner, name)

        async def receive(self, timeout: float | None = None) -> Message:
            while True:
                try:
                    self._buffer.append(await self._inner.receive(timeout=0.05))  # type: ignore[attr-defined]
                except Exception:
                    break
            if not self._buffer:
                return await self._inner.receive(timeout)  # type: ignore[attr-defined,no-any-return]
            return self._buffer.pop()

    async def broken_pair() -> tuple[object, object]:
        alice, bob = await memory_pair()
        return alice, ReordersMessages(bob)

    with pytest.raises(AssertionError, match="keeps_order"):
        await check_mailbox(broken_pair)  # type: ignore[arg-type]


@pytest.mark.parametrize("reader", ["channel", "mailbox"])
@pytest.mark.virtual_time
async def test_a_cancel_that_comes_with_a_message_is_not_lost(reader: str) -> None:
    """SIGTERM cancels the modeller's task while a reply arrives: the task must stop.

    With 3.11's asyncio.wait_for under a request time-out, the cancel was swallowed and the
    task read on (``fedloom run`` did not exit after SIGTERM, 2 full-suite runs in 5).
    """

    hub = MemoryHub()
    modeller, pod = connect_federation(hub, "modeller", ["pod"]).values()
    channel = Channel("t")

    async def read() -> None:
        while True:
            if reader == "channel":
                await channel.get(timeout=60)
            else:
                await pod.receive(timeout=60)

    task = asyncio.create_task(read())
    await asyncio.sleep(0)  # the reader waits
    channel.put(Message(MessageType.RESULTS, "pod", "modeller", "t"))
    await modeller.send(Message(MessageType.RESULTS, "", "pod", "t"))
    task.cancel()  # in the same loop iteration as the arrival
    await asyncio.wait({task}, timeout=1)
    stopped = task.done()
    task.cancel()
    await asyncio.wait({task})
    await hub.close()
    assert stopped, "the cancellation was lost"


async def test_hub_refuses_duplicate_and_empty_identities() -> None:
    hub = MemoryHub()
    hub.connect("pod-a", "pod", accepts=[])
    with pytest.raises(ConfigError, match="already connected"):
        hub.connect("pod-a", "pod", accepts=[])
    with pytest.raises(ConfigError):
        hub.connect("", "modeller")
    await hub.close()
    with pytest.raises(MailboxClosedError):
        hub.connect("pod-b", "pod", accepts=[])


async def test_router_sends_each_task_to_its_channel_and_the_rest_to_the_inbox() -> None:
    hub = MemoryHub()
    modeller, pod = connect_federation(hub, "modeller", ["pod"]).values()
    router = TaskRouter(pod)
    router.start()
    channel = router.open_channel("t1")
    await modeller.send(Message(MessageType.INSTRUCTION, "", "pod", "t2", body=2))
    await modeller.send(Message(MessageType.INSTRUCTION, "", "pod", "t1", body=1))
    assert (await channel.get(timeout=5)).body == 1
    assert (await router.inbox.get(timeout=5)).body == 2
    await router.close()
    with pytest.raises(MailboxClosedError):
        await channel.get(timeout=5)


def _task_pair(
    hub: MemoryHub, pods: list[str]
) -> tuple[ModellerMailbox, dict[str, WorkerMailbox], list[TaskRouter]]:
    mailboxes = connect_federation(hub, "modeller", pods)
    modeller_router = TaskRouter(mailboxes["modeller"])
    modeller_router.start()
    modeller = ModellerMailbox(modeller_router, modeller_router.open_channel("task"), pods)
    workers, routers = {}, [modeller_router]
    for pod in pods:
        router = TaskRouter(mailboxes[pod])
        router.start()
        routers.append(router)
        workers[pod] = WorkerMailbox(router, router.open_channel("task"), "modeller")
    return modeller, workers, routers


async def test_gather_collects_replies_aborts_and_missing_pods() -> None:
    hub = MemoryHub()
    modeller, workers, routers = _task_pair(hub, ["a", "b", "c"])
    progress: list[tuple[str, object]] = []
    modeller._on_progress = lambda pod, kind, body: progress.append((pod, body.get("step")))
    await workers["a"].progress(step=1)
    await workers["a"].send(MessageType.RESULTS, {"value": 1}, {"w": np.ones(2)})
    report = ErrorReport(AbortReason.PRIVACY_THRESHOLD, "too few rows", "PrivacyThresholdError", "")
    await workers["b"].send(MessageType.TASK_ABORT, report.to_body())
    gathered = await modeller.gather(MessageType.RESULTS, timeout=0.3)
    assert set(gathered.replies) == {"a"}
    assert np.array_equal(gathered.replies["a"].tensors["w"], np.ones(2))
    assert gathered.aborted["b"].reason is AbortReason.PRIVACY_THRESHOLD
    assert gathered.missing == ["c"]
    assert modeller.pods == ["a", "c"], "an aborting pod leaves the task"
    assert progress == [("a", 1)]
    for router in routers:
        await router.close()


async def test_gather_keeps_early_replies_to_a_later_step() -> None:
    hub = MemoryHub()
    modeller, workers, routers = _task_pair(hub, ["a"])
    await workers["a"].send(MessageType.RESULTS, "later")
    await workers["a"].send(MessageType.TRAINING_UPDATE, "now")
    first = await modeller.gather(MessageType.TRAINING_UPDATE, timeout=5)
    second = await modeller.gather(MessageType.RESULTS, timeout=5)
    assert first.replies["a"].body == "now" and second.replies["a"].body == "later"
    for router in routers:
        await router.close()


async def test_worker_receive_rejects_unexpected_types_and_reports_cancellation() -> None:
    hub = MemoryHub()
    modeller, workers, routers = _task_pair(hub, ["a"])
    await modeller.send("a", MessageType.RESULTS)
    with pytest.raises(ProtocolError, match="expected TASK_START"):
        await workers["a"].receive(MessageType.TASK_START, timeout=5)
    await modeller.send("a", MessageType.TASK_CANCEL)
    with pytest.raises(TaskAbortedError) as caught:
        await workers["a"].receive(MessageType.TASK_START, timeout=5)
    assert caught.value.reason is AbortReason.CANCELLED_BY_MODELLER
    await modeller.drop("a", AbortReason.MODELLER_TIMEOUT, "too slow")
    with pytest.raises(TaskAbortedError) as dropped:
        await workers["a"].receive(MessageType.TASK_START, timeout=5)
    assert dropped.value.reason is AbortReason.MODELLER_TIMEOUT
    assert modeller.pods == []
    for router in routers:
        await router.close()


async def test_stream_yields_replies_routes_status_and_stops_when_quiet() -> None:
    hub = MemoryHub()
    modeller, workers, routers = _task_pair(hub, ["a", "b"])
    seen: list[str] = []
    modeller._on_progress = lambda pod, kind, body: seen.append(f"{pod}:{kind.value}")
    await workers["a"].send(MessageType.PREPARING_DATA)
    await workers["a"].send(MessageType.EVALUATION_RESULTS, {"batch": 1})
    report = ErrorReport(AbortReason.WORKER_ERROR, "boom", "RuntimeError", "")
    await workers["b"].send(MessageType.TASK_ABORT, report.to_body())
    await workers["a"].send(MessageType.EVALUATION_RESULTS, {"batch": 2})
    streamed = [(m.sender, m.type) async for m in modeller.stream(timeout=0.2)]
    assert streamed == [
        ("a", MessageType.EVALUATION_RESULTS),
        ("b", MessageType.TASK_ABORT),
        ("a", MessageType.EVALUATION_RESULTS),
    ]
    assert seen == ["a:PREPARING_DATA"], "status messages go to the callback, not the stream"
    assert modeller.pods == ["a"] and modeller.aborted["b"].message == "boom"
    for router in routers:
        await router.close()


async def test_a_pod_survives_a_request_from_a_modeller_that_already_left() -> None:
    from fedloom.datasources import ArraySource
    from fedloom.pod import Pod
    from fedloom.store import MemoryPodStore

    hub = MemoryHub()
    store = MemoryPodStore()
    pod = Pod(
        "pod",
        {"default": ArraySource(np.ones((20, 2)), np.zeros(20, dtype=np.int64))},
        store=store,
    )
    serving = asyncio.ensure_future(
        pod.serve(hub.connect("pod", "pod", accepts=["ghost", "modeller"]))
    )
    ghost = hub.connect("ghost", "modeller")
    request = {
        "task": {"protocol": "results_only", "config": {"algorithm": "dataset_summary"}},
        "dataset": "default",
    }
    await ghost.send(Message(MessageType.JOB_REQUEST, "", "pod", "t1", body=request))
    await ghost.close()  # gone before the pod answers
    modeller = hub.connect("modeller", "modeller")
    await modeller.send(Message(MessageType.JOB_REQUEST, "", "pod", "t2", body=request))
    reply = await modeller.receive(timeout=5)
    assert reply.type is MessageType.JOB_ACCEPT and reply.task_id == "t2"
    assert not serving.done(), "the pod must keep serving"
    await hub.close()
    await serving


@pytest.mark.virtual_time
@pytest.mark.async_timeout(1100)  # it sleeps 1000 s of the loop's clock
async def test_virtual_time_jumps_when_idle_and_waits_for_threads() -> None:
    """The loop unit tests run on: timers cost no real time, threads are waited for."""
    import threading

    release = threading.Event()

    loop = asyncio.get_running_loop()
    await asyncio.sleep(1000)
    slept = loop.time()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(30):
            await asyncio.Event().wait()
    timed_out = loop.time()
    # while a thread works, a timer must not fire however long it takes
    timer = asyncio.ensure_future(asyncio.sleep(1))
    threading.Timer(0.05, release.set).start()  # the thread's work: 50 ms of real time
    assert await asyncio.to_thread(release.wait, 5)
    fired_during_work = timer.done() or loop.time() != timed_out
    await timer
    assert (slept, timed_out, fired_during_work) == (1000.0, 1030.0, False)
