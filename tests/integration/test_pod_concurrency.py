"""A pod runs at most ``max_concurrent_tasks`` tasks; the rest wait in arrival order."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import numpy as np

from fedloom import LocalFederation, ResultsOnly
from fedloom._events import Event, EventKind
from fedloom.errors import AbortReason, ErrorReport, ReceiveTimeoutError
from fedloom.plugins import Message, MessageType
from fedloom.pod import ArraySource, MemoryPodStore, PodPolicy
from fedloom.transport import Mailbox

from .conftest import REPLY_TIMEOUT, until_idle
from .pod_events import said

ROWS = 24
SUMMARY = {"protocol": "results_only", "config": {"algorithm": "dataset_summary"}}
Seen = tuple[float, str, dict[str, Any]]


def source() -> ArraySource:
    rng = np.random.default_rng(3)
    return ArraySource(rng.normal(size=(ROWS, 3)).astype(np.float32))


async def test_a_task_beyond_the_limit_is_queued_and_never_runs_alongside_the_first() -> None:
    # the store's clock is the one the progress events are stamped with, so the pod's
    # record of the first task's end can be compared with the second task's start
    store = MemoryPodStore(clock=time.monotonic)
    events: dict[str, list[Seen]] = {"one": [], "two": []}

    tasks: dict[str, str] = {}  # task id -> label, in the order the runs begin

    def recorder(event: Event) -> None:
        if event.kind is EventKind.TASK_STARTED:
            tasks[event.task] = "one" if not tasks else "two"
        elif event.participant == "pod-a":
            events[tasks[event.task]].append((time.monotonic(), said(event), dict(event.fields)))

    policy = PodPolicy(max_concurrent_tasks=1, start_timeout=REPLY_TIMEOUT)
    async with LocalFederation(
        {"pod-a": source()}, policy=policy, guests=["raw"], pod_stores={"pod-a": store}
    ) as federation:
        pod = federation.pods["pod-a"]
        most = 0
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal most
            while not done.is_set():
                most = max(most, len(pod.running_tasks()))
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        task = ResultsOnly("dataset_summary")
        federation.modeller.subscribe(recorder)
        one, two = await asyncio.gather(federation.run(task), federation.run(task))
        assert [tasks[one.task_id], tasks[two.task_id]] == ["one", "two"]
        await until_idle(pod)
        done.set()
        await watcher
        assert pod.queued_tasks() == []

    assert most == 1
    for run in (one, two):
        assert run.result["pod-a"].body["rows"] == ROWS
        assert store.get_task_run(run.task_id).status == "completed"

    queued = {
        label: [body for _, kind, body in log if kind == "progress"]
        for label, log in events.items()
    }
    # whichever request reached the pod second waited, at position 1, and was told once
    assert sorted(queued.values(), key=len) == [[], [{"state": "queued", "position": 1}]]
    second = "one" if queued["one"] else "two"
    first_run = two if second == "one" else one
    kinds = [kind for _, kind, _ in events[second]]
    assert kinds == ["progress", *HEARD_STARTING]
    started = events[second][1][0]
    finished = store.get_task_run(first_run.task_id).finished_at
    assert finished is not None and finished <= started
    assert [kind for _, kind, _ in events["two" if second == "one" else "one"]] == HEARD_STARTING


STARTING = [MessageType.PREPARING_DATA, MessageType.CONFIGURING_TASK, MessageType.NUM_BATCHES]
HEARD_STARTING = ["preparing_data", "configuring_task", "batch_count"]
"""What the modeller's events say of those messages (see ``pod_events.said``)."""


"""What a pod says when a (non-batched) task starts: the last is NUM_BATCHES = 1."""


class Script:
    """A modeller written message by message, to hold slots and cancel queued tasks."""

    def __init__(self, mailbox: Mailbox, pod: str) -> None:
        self.mailbox = mailbox
        self.pod = pod

    async def send(self, type: MessageType, task_id: str, body: Any = None) -> None:
        await self.mailbox.send(Message(type, "", self.pod, task_id, body=body))

    async def request(self) -> str:
        task_id = uuid.uuid4().hex
        await self.send(MessageType.JOB_REQUEST, task_id, {"task": SUMMARY, "dataset": "default"})
        await self.expect(MessageType.JOB_ACCEPT, task_id)
        return task_id

    async def expect(self, type: MessageType, task_id: str) -> Any:
        message = await self.mailbox.receive(timeout=REPLY_TIMEOUT)
        assert (message.type, message.task_id) == (type, task_id), (message, message.body)
        return message.body

    async def expect_start(self, task_id: str) -> None:
        """The status messages of a task that leaves the queue and starts."""
        for kind in STARTING:
            await self.expect(kind, task_id)

    async def queued_at(self, task_id: str) -> int:
        body = await self.expect(MessageType.PROGRESS, task_id)
        assert body["state"] == "queued", body
        return int(body["position"])

    async def silence(self, seconds: float = 0.2) -> None:
        try:
            extra = await self.mailbox.receive(timeout=seconds)
        except ReceiveTimeoutError:
            return
        raise AssertionError(f"unexpected {extra.type} for task {extra.task_id}: {extra.body}")


async def settle(condition: Any, timeout: float = REPLY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the pod did not get there in time"
        await asyncio.sleep(0.005)


async def test_positions_move_up_when_queued_tasks_leave_and_the_slot_goes_to_the_next() -> None:
    store = MemoryPodStore()
    policy = PodPolicy(max_concurrent_tasks=1, start_timeout=60)

    async with LocalFederation(
        {"pod-a": source()}, policy=policy, guests=["raw"], pod_stores={"pod-a": store}
    ) as federation:
        pod = federation.pods["pod-a"]
        script = Script(federation.hub.connect("raw", "modeller"), "pod-a")
        holder = await script.request()  # runs, and waits for a TASK_START that is late
        await script.expect_start(holder)
        queue = []
        for position in (1, 2, 3):
            queue.append(await script.request())
            assert await script.queued_at(queue[-1]) == position
        first, second, third = queue
        assert pod.running_tasks() == [holder]
        assert pod.queued_tasks() == [first, second, third]

        # what the modeller sends a queued task is kept for it, in order
        await script.send(MessageType.TASK_START, second)
        await script.send(MessageType.INSTRUCTION, second, {"step": "run"})

        # the head leaves (the pod answers the cancel with TASK_ABORT): everyone behind
        # it moves up, and is told so
        await script.send(MessageType.TASK_CANCEL, first)
        moved = {}
        answered = []
        for _ in range(3):
            message = await script.mailbox.receive(timeout=REPLY_TIMEOUT)
            if message.type is MessageType.TASK_ABORT:
                answered.append((message.task_id, message.body["reason"]))
                continue
            assert message.type is MessageType.PROGRESS, message
            moved[message.task_id] = message.body["position"]
        assert moved == {second: 1, third: 2}
        assert answered == [(first, AbortReason.CANCELLED_BY_MODELLER.value)]
        assert pod.queued_tasks() == [second, third]

        # the tail leaves: nobody moves, so nobody is told anything
        report = ErrorReport(AbortReason.MODELLER_TIMEOUT, "gave up waiting", "", "")
        await script.send(MessageType.TASK_ABORT, third, report.to_body())
        await settle(lambda: pod.queued_tasks() == [second])
        await script.silence()

        # the running task ends: the slot goes to the queue's head, which starts and
        # answers the instruction it was sent while it waited
        await script.send(MessageType.TASK_CANCEL, holder)
        await script.expect(MessageType.TASK_ABORT, holder)
        await script.expect_start(second)
        results = await script.expect(MessageType.RESULTS, second)
        assert results["rows"] == ROWS
        assert pod.running_tasks() == [second] and pod.queued_tasks() == []
        await script.send(MessageType.TASK_COMPLETE, second)
        await until_idle(pod)
        await script.silence()
        ids = {"holder": holder, "first": first, "second": second, "third": third}

    runs = {label: store.get_task_run(task_id) for label, task_id in ids.items()}
    assert (runs["holder"].status, runs["holder"].reason) == (
        "aborted",
        AbortReason.CANCELLED_BY_MODELLER.value,
    )
    assert (runs["first"].status, runs["first"].reason) == (
        "aborted",
        AbortReason.CANCELLED_BY_MODELLER.value,
    )
    assert (runs["third"].status, runs["third"].reason) == (
        "aborted",
        AbortReason.MODELLER_TIMEOUT.value,
    )
    assert runs["second"].status == "completed"


async def test_a_pod_that_stops_ends_its_running_and_queued_tasks() -> None:
    store = MemoryPodStore()
    policy = PodPolicy(max_concurrent_tasks=1, start_timeout=60)

    federation = LocalFederation(
        {"pod-a": source()}, policy=policy, guests=["raw"], pod_stores={"pod-a": store}
    )
    async with federation:
        script = Script(federation.hub.connect("raw", "modeller"), "pod-a")
        holder = await script.request()
        await script.expect_start(holder)
        waiting = await script.request()
        assert await script.queued_at(waiting) == 1
    task_ids = [holder, waiting]
    pod = federation.pods["pod-a"]

    assert pod.running_tasks() == [] and pod.queued_tasks() == []
    for task_id in task_ids:
        assert store.get_task_run(task_id).status == "aborted"


async def test_tasks_within_the_limit_start_at_once() -> None:
    policy = PodPolicy(max_concurrent_tasks=2, start_timeout=60)
    async with LocalFederation({"pod-a": source()}, policy=policy, guests=["raw"]) as federation:
        pod = federation.pods["pod-a"]
        script = Script(federation.hub.connect("raw", "modeller"), "pod-a")
        started = []
        for _ in range(2):
            task_id = await script.request()
            await script.expect_start(task_id)
            started.append(task_id)
        third = await script.request()
        assert await script.queued_at(third) == 1
        started.sort()
        running = pod.running_tasks()

    assert running == started
