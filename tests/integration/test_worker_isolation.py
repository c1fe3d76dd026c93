"""Each task runs in a spawned child process; every way it can fail is caught and reported."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import numpy as np
import psutil
import pytest

import fedloom.testing._faults  # noqa: F401 - registers the "fault" protocol here
from fedloom import LocalFederation
from fedloom.errors import AbortReason, PodResponseError
from fedloom.pod import ArraySource, MemoryPodStore
from fedloom.testing._faults import Fault
from fedloom.worker import IsolationSettings

from .conftest import until_idle

PLUGINS = ("fedloom.testing._faults",)
FAST = IsolationSettings(heartbeat_interval=0.5, heartbeat_patience=2, stop_grace=2.0)


def _pods() -> dict[str, ArraySource]:
    rng = np.random.default_rng(0)
    return {"pod-a": ArraySource(rng.normal(size=(40, 3)).astype(np.float32))}


async def _run(federation: LocalFederation, fault: Fault, **options: Any) -> tuple[Any, float]:
    started = time.monotonic()
    run = await federation.run(fault, **options)
    return run, time.monotonic() - started


def _federation(store: MemoryPodStore, settings: IsolationSettings = FAST) -> LocalFederation:
    return LocalFederation(
        _pods(), pod_stores={"pod-a": store}, isolation=settings, plugins=PLUGINS
    )


@pytest.mark.async_timeout(120)
async def test_a_task_runs_in_a_child_without_hub_connection_or_keys() -> None:
    store = MemoryPodStore()

    async with _federation(store) as federation:
        run, _ = await _run(federation, Fault("ok"))
        await until_idle(federation.pods["pod-a"])
    facts = run.result["pod-a"]
    assert facts["pid"] != os.getpid()
    assert facts["inet_connections"] == 0
    assert facts["grpc_loaded"] is False
    assert not psutil.pid_exists(facts["pid"]) or psutil.Process(facts["pid"]).status() in (
        psutil.STATUS_ZOMBIE,
        psutil.STATUS_DEAD,
    )
    assert [(r.status, r.protocol) for r in store.task_runs()] == [("completed", "fault")]


@pytest.mark.parametrize(
    ("fault", "reason", "words"),
    [
        (Fault("raise"), AbortReason.WORKER_ERROR, "injected failure"),
        (Fault("exit"), AbortReason.WORKER_CRASHED, "exited with code 3"),
        (Fault("kill"), AbortReason.WORKER_CRASHED, "signal 9"),
        (Fault("hang", seconds=60), AbortReason.WORKER_UNRESPONSIVE, "no heartbeat"),
        (
            Fault("allocate", megabytes=2048),
            AbortReason.WORKER_OUT_OF_MEMORY,
            "above the pod's cap",
        ),
    ],
    ids=["raise", "exit", "sigkill", "hang", "memory"],
)
@pytest.mark.async_timeout(180)
async def test_a_failing_child_is_reported_and_the_pod_goes_on(
    fault: Fault, reason: AbortReason, words: str
) -> None:
    store = MemoryPodStore()
    settings = IsolationSettings(
        heartbeat_interval=0.5, heartbeat_patience=2, stop_grace=2.0, memory_limit_bytes=700 << 20
    )

    async with _federation(store, settings) as federation:
        run, seconds = await _run(federation, fault)
        assert run.result == {}
        report = run.aborted["pod-a"]
        assert report.reason is reason, report
        assert words in report.message
        assert seconds < 40
        await until_idle(federation.pods["pod-a"])
        assert federation.pods["pod-a"].workers == {}
        # the same pod then runs a normal task
        ok, _ = await _run(federation, Fault("ok"))
        assert "pod-a" in ok.result
        await until_idle(federation.pods["pod-a"])
    statuses = [(r.status, r.reason) for r in store.task_runs()]
    assert statuses == [("aborted", reason.value), ("completed", None)]


@pytest.mark.async_timeout(120)
async def test_the_modeller_cancels_a_running_task() -> None:
    store = MemoryPodStore()

    async with _federation(store) as federation:
        pod = federation.pods["pod-a"]
        running = asyncio.ensure_future(federation.run(Fault("sleep", seconds=120)))
        deadline = time.monotonic() + 60
        while not pod.workers and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        (worker,) = pod.workers.values()
        while worker.ready_at is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        child = worker.process
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        deadline = time.monotonic() + 20
        while pod.running_tasks() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert child.exitcode is not None, "the child must be stopped"
    (record,) = store.task_runs()
    assert (record.status, record.reason) == ("aborted", "CANCELLED_BY_MODELLER")


async def _failure_of(federation: LocalFederation) -> str:
    """The reason pod-a failed the task: before the start (the modeller cannot start the
    task at all) or after it (the pod aborted mid-task), depending on timing."""
    try:
        run = await federation.run(Fault("ok"))
    except PodResponseError as exc:
        return exc.failed_pods["pod-a"].split(":")[0]
    return run.aborted["pod-a"].reason.value


@pytest.mark.async_timeout(120)
async def test_failures_while_the_child_rebuilds_the_worker(tmp_path: Any) -> None:
    """A dataset that cannot be read, or an unknown hook, fails in the child, not the pod."""
    from fedloom.pod import TableSource

    store = MemoryPodStore()

    missing = {"pod-a": TableSource(tmp_path / "missing.csv")}
    async with LocalFederation(
        missing, pod_stores={"pod-a": store}, isolation=FAST, plugins=PLUGINS
    ) as federation:
        assert await _failure_of(federation) == "NO_DATA"
        await until_idle(federation.pods["pod-a"])
        pod = federation.pods["pod-a"]
        pod.datasets = {"default": _pods()["pod-a"]}
        pod.hooks = ("no-such-hook",)
        assert await _failure_of(federation) == "INVALID_TASK"
        await until_idle(pod)
    assert [r.reason for r in store.task_runs()] == ["NO_DATA", "INVALID_TASK"]


@pytest.mark.parametrize("isolated", [False, True], ids=["in-process", "child-process"])
@pytest.mark.async_timeout(120)
async def test_task_cancel_is_answered_with_task_abort(isolated: bool) -> None:
    """DESIGN: the modeller may send TASK_CANCEL; the pod stops the worker and answers
    TASK_ABORT(CANCELLED_BY_MODELLER). A child is stopped wherever it is; a worker in the
    pod's own process notices when it next reads its mailbox (here: waiting for the end)."""
    from fedloom.hub import MemoryHub
    from fedloom.plugins import Message, MessageType
    from fedloom.pod import Pod
    from fedloom.session import report_of

    from .conftest import RAW, RawClient

    store = MemoryPodStore()

    hub = MemoryHub()
    pod = Pod(
        "pod-a",
        {"default": _pods()["pod-a"]},
        store=store,
        isolation=FAST if isolated else None,
        plugins=PLUGINS,
    )
    serving = asyncio.ensure_future(pod.serve(hub.connect("pod-a", "pod", accepts=[RAW])))
    client = RawClient(hub)
    fault = Fault("sleep", seconds=120) if isolated else Fault("ok")
    body = {"task": fault.dump(), "dataset": "default"}
    accept = await client.request("pod-a", body)
    task = accept.task_id
    send = client.mailbox.send
    await send(Message(MessageType.TASK_START, "", "pod-a", task))
    await send(Message(MessageType.INSTRUCTION, "", "pod-a", task, body={"step": "go"}))
    deadline = time.monotonic() + 60
    while not pod.running_tasks() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if isolated:
        while (not pod.workers or next(iter(pod.workers.values())).ready_at is None) and (
            time.monotonic() < deadline
        ):
            await asyncio.sleep(0.05)
    if not isolated:  # the worker answered and now waits in its mailbox
        while (await client.mailbox.receive(timeout=30)).type is not MessageType.RESULTS:
            pass
    await asyncio.sleep(0.3)
    await send(Message(MessageType.TASK_CANCEL, "", "pod-a", task))
    while True:
        reply = await client.mailbox.receive(timeout=30)
        if reply.type is MessageType.TASK_ABORT:
            break
    assert report_of(reply).reason is AbortReason.CANCELLED_BY_MODELLER
    await until_idle(pod)
    await hub.close()
    await serving

    (record,) = store.task_runs()
    assert (record.status, record.reason) == ("aborted", "CANCELLED_BY_MODELLER")
