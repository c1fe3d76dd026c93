"""A pod ends tasks whose modeller went silent (MODELLER_TIMEOUT); HEARTBEAT keeps them alive."""

from __future__ import annotations

import asyncio
import time
import uuid

import psutil
import pytest

from fedloom import LocalFederation
from fedloom.errors import AbortReason
from fedloom.plugins import MessageType
from fedloom.pod import MemoryPodStore, PodPolicy
from fedloom.testing._faults import Fault
from fedloom.worker import IsolationSettings

from .conftest import REPLY_TIMEOUT, until_idle
from .test_pod_concurrency import STARTING, SUMMARY, Script, settle, source

FAST = IsolationSettings(heartbeat_interval=0.5, heartbeat_patience=2, stop_grace=2.0)
SILENCE = 1.0


async def test_a_silent_modellers_task_ends_and_frees_its_slot() -> None:
    store = MemoryPodStore()
    policy = PodPolicy(max_concurrent_tasks=1, modeller_timeout=SILENCE)

    async with LocalFederation(
        {"pod-a": source()}, policy=policy, guests=["raw"], pod_stores={"pod-a": store}
    ) as federation:
        pod = federation.pods["pod-a"]
        script = Script(federation.hub.connect("raw", "modeller"), "pod-a")
        held = await script.request()
        await script.expect_start(held)
        queued = await script.request()
        assert await script.queued_at(queued) == 1
        began = time.monotonic()
        # the holder gets its TASK_START and answers, then its modeller says nothing more
        await script.send(MessageType.TASK_START, held)
        await script.send(MessageType.INSTRUCTION, held, {"step": "run"})
        await script.expect(MessageType.RESULTS, held)
        # the queued task is kept alive by HEARTBEAT; the held one times out
        while pod.running_tasks() == [held]:
            await script.send(MessageType.HEARTBEAT, queued)
            await asyncio.sleep(SILENCE / 4)
            assert time.monotonic() - began < REPLY_TIMEOUT, "the silent task never ended"
        aborted = await script.expect(MessageType.TASK_ABORT, held)
        assert aborted["reason"] == AbortReason.MODELLER_TIMEOUT.value
        waited = time.monotonic() - began
        # the slot went to the queued task, whose heartbeats never reached its worker
        await script.expect_start(queued)
        await script.send(MessageType.TASK_START, queued)
        await script.send(MessageType.INSTRUCTION, queued, {"step": "run"})
        await script.expect(MessageType.RESULTS, queued)
        await script.send(MessageType.TASK_COMPLETE, queued)
        await until_idle(pod)

    assert SILENCE <= waited < SILENCE + 5
    assert (store.get_task_run(held).status, store.get_task_run(held).reason) == (
        "aborted",
        AbortReason.MODELLER_TIMEOUT.value,
    )
    assert store.get_task_run(queued).status == "completed"


async def test_the_accept_tells_the_modeller_how_long_the_pod_waits() -> None:
    policy = PodPolicy(modeller_timeout=42.0)

    async with LocalFederation({"pod-a": source()}, policy=policy, guests=["raw"]) as federation:
        script = Script(federation.hub.connect("raw", "modeller"), "pod-a")
        task_id = uuid.uuid4().hex
        request = {"task": SUMMARY, "dataset": "default"}
        await script.send(MessageType.JOB_REQUEST, task_id, request)
        accept = await script.expect(MessageType.JOB_ACCEPT, task_id)
        await script.send(MessageType.TASK_CANCEL, task_id)
        assert float(accept["modeller_timeout"]) == 42.0


@pytest.mark.async_timeout(120)
async def test_a_silent_modellers_task_child_is_stopped() -> None:
    store = MemoryPodStore()
    policy = PodPolicy(modeller_timeout=SILENCE)

    async with LocalFederation(
        {"pod-a": source()},
        policy=policy,
        guests=["raw"],
        pod_stores={"pod-a": store},
        isolation=FAST,
    ) as federation:
        pod = federation.pods["pod-a"]
        script = Script(federation.hub.connect("raw", "modeller"), "pod-a")
        task_id = await script.request()
        for kind in STARTING:
            await script.expect(kind, task_id)
        await settle(lambda: task_id in pod.workers)
        pid = pod.workers[task_id].pid
        assert pid is not None
        await script.send(MessageType.TASK_START, task_id)
        await script.send(MessageType.INSTRUCTION, task_id, {"step": "run"})

        async def alive() -> None:  # while the child starts (longer than SILENCE)
            while True:
                await script.send(MessageType.HEARTBEAT, task_id)
                await asyncio.sleep(SILENCE / 4)

        beating = asyncio.create_task(alive())
        try:
            await script.expect(MessageType.RESULTS, task_id)
        finally:
            beating.cancel()
        aborted = await script.expect(MessageType.TASK_ABORT, task_id)
        assert aborted["reason"] == AbortReason.MODELLER_TIMEOUT.value
        await until_idle(pod)
        assert task_id not in pod.workers

    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() in (
        psutil.STATUS_ZOMBIE,
        psutil.STATUS_DEAD,
    )
    [run] = store.task_runs()
    assert (run.status, run.reason) == ("aborted", AbortReason.MODELLER_TIMEOUT.value)


async def test_no_task_start_in_time_is_a_modeller_timeout_in_process_too() -> None:
    store = MemoryPodStore()
    policy = PodPolicy(start_timeout=0.5)

    async with LocalFederation(
        {"pod-a": source()}, policy=policy, guests=["raw"], pod_stores={"pod-a": store}
    ) as federation:
        script = Script(federation.hub.connect("raw", "modeller"), "pod-a")
        task_id = await script.request()
        await script.expect_start(task_id)
        aborted = await script.expect(MessageType.TASK_ABORT, task_id)
        await until_idle(federation.pods["pod-a"])
        reason = aborted["reason"]

    assert reason == AbortReason.MODELLER_TIMEOUT.value
    run = store.get_task_run(task_id)
    assert (run.status, run.reason) == ("aborted", AbortReason.MODELLER_TIMEOUT.value)


async def test_a_modeller_waiting_longer_than_the_pods_timeout_keeps_its_task_alive() -> None:
    # the modeller says nothing while the pod works for 4x its modeller_timeout: only its
    # heartbeats (sent within the timeout the pod named in JOB_ACCEPT) keep the task going
    store = MemoryPodStore()
    policy = PodPolicy(modeller_timeout=0.4)

    async with LocalFederation(
        {"pod-a": source()}, policy=policy, guests=["raw"], pod_stores={"pod-a": store}
    ) as federation:
        run = await federation.run(Fault("sleep", seconds=1.6))
        await until_idle(federation.pods["pod-a"])
        assert dict(run.aborted) == {}

    [run] = store.task_runs()
    assert run.status == "completed", run.reason
