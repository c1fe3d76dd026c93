"""Cancelling a task with real pod processes: TASK_CANCEL, the pods' answers, their slots.

DESIGN: the modeller may send TASK_CANCEL; the pod stops the child and answers
TASK_ABORT(CANCELLED_BY_MODELLER). Each pod here runs one task at a time
(``max_concurrent_tasks = 1``): a task that still held the slot would queue the next one.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from fedloom import Modeller
from fedloom._cluster import LocalCluster, PodSpec
from fedloom._events import MODELLER, Event
from fedloom.errors import AbortReason
from fedloom.modeller import TaskCancellation
from fedloom.modeller._modeller import TELL_PODS_SECONDS
from fedloom.pod import SqlitePodStore
from fedloom.testing._faults import Fault

from .pod_events import said

CANCELLED = AbortReason.CANCELLED_BY_MODELLER.value


def _specs(root: Path, pods: tuple[str, ...]) -> dict[str, PodSpec]:
    data = root / "data.csv"
    data.parent.mkdir(parents=True, exist_ok=True)
    data.write_text("x,label\n" + "".join(f"{i},{i % 2}\n" for i in range(20)))
    table = {"kind": "table", "path": str(data), "label_column": "label"}
    return {
        pod: PodSpec(
            datasets={"default": table},
            plugins=("fedloom.testing._faults",),
            max_concurrent_tasks=1,
            worker={"heartbeat_interval": 1.0},
        )
        for pod in pods
    }


async def _task_children(pid: int) -> list[psutil.Process]:
    """The pod's task child processes (spawned, not its resource tracker), once there is one."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = [
            child
            for child in psutil.Process(pid).children()
            if any("spawn_main" in part for part in child.cmdline())
        ]
        if found:
            return found
        await asyncio.sleep(0.1)
    raise AssertionError("the pod started no task child")


async def _task_runs(cluster: LocalCluster, pod: str, count: int) -> list[tuple[str, str | None]]:
    """The pod's (status, reason) per task, once ``count`` have ended (the pod records the
    end of a task right after it answered the modeller)."""
    deadline = time.monotonic() + 20
    while True:
        with SqlitePodStore(cluster.pod_config_path(pod).parent / "pod.sqlite") as store:
            runs = [(r.status, r.reason) for r in store.task_runs()]
        ended = [run for run in runs if run[0] in ("completed", "aborted")]
        if len(ended) >= count or time.monotonic() > deadline:
            return runs
        await asyncio.sleep(0.1)


class Progress:
    """What pods report to a modeller (its events); an asyncio event per (pod, what).

    ``what`` is a status (``"preparing_data"``) or an event kind (``"batch_count"``).
    """

    def __init__(self, modeller: Modeller) -> None:
        self.seen: list[tuple[str, str, dict[str, Any]]] = []
        self.events: dict[tuple[str, str], asyncio.Event] = {}
        self.subscription = modeller.subscribe(self)

    def event(self, pod: str, what: str) -> asyncio.Event:
        return self.events.setdefault((pod, what), asyncio.Event())

    def __call__(self, event: Event) -> None:
        if event.participant == MODELLER:
            return
        what = said(event)
        self.seen.append((event.participant, what, dict(event.fields)))
        self.event(event.participant, what).set()

    def queued(self) -> bool:
        return any(body.get("state") == "queued" for _, _, body in self.seen)


async def _next_task_is_not_queued(modeller: Modeller) -> dict[str, Any]:
    """Run a quick task on pod-a: its slot must be free (no "queued" PROGRESS)."""
    progress = Progress(modeller)
    with progress.subscription:
        run = await modeller.run(Fault("ok"), ["pod-a"])
    assert not progress.queued(), progress.seen
    result: dict[str, Any] = run.result
    return result


async def _cancel(modeller: Modeller, run: asyncio.Task[Any]) -> tuple[TaskCancellation, float]:
    """Cancel the modeller's one task: what it told the pods, and the seconds it took."""
    started = time.monotonic()
    (cancellation,) = await modeller.cancel()
    seconds = time.monotonic() - started
    with pytest.raises(asyncio.CancelledError):
        await run
    return cancellation, seconds


@pytest.mark.async_timeout(240)
async def test_cancel_mid_task_stops_the_child_and_frees_the_slot(tmp_path: Path) -> None:
    async with LocalCluster(tmp_path / "cluster", _specs(tmp_path, ("pod-a",))) as cluster:
        modeller = Modeller(await cluster.connect_modeller())
        progress = Progress(modeller)
        run = asyncio.create_task(modeller.run(Fault("sleep", seconds=120, timeout=300), ["pod-a"]))
        # NUM_BATCHES comes once the pod started the child; the modeller has sent
        # TASK_START by then: the task is running
        await asyncio.wait_for(progress.event("pod-a", "batch_count").wait(), 60)
        children = await _task_children(cluster.pid("pod-a"))
        await asyncio.sleep(2)  # the child gets to the task's long sleep
        assert [child.is_running() for child in children] == [True] * len(children)
        assert modeller.running_tasks() != []

        cancellation, seconds = await _cancel(modeller, run)

        # the pod answered TASK_ABORT(CANCELLED_BY_MODELLER) once the child was gone
        assert list(cancellation.acknowledged) == ["pod-a"], cancellation
        assert cancellation.acknowledged["pod-a"].reason is AbortReason.CANCELLED_BY_MODELLER
        assert cancellation.unanswered == []
        assert seconds < TELL_PODS_SECONDS
        _, alive = psutil.wait_procs(children, timeout=2)
        assert alive == [], "the task's child outlived the cancel"
        assert await _task_runs(cluster, "pod-a", 1) == [("aborted", CANCELLED)]

        # the slot is free: the next task starts at once
        result = await _next_task_is_not_queued(modeller)
        assert set(result) == {"pod-a"}
        assert await _task_runs(cluster, "pod-a", 2) == [
            ("aborted", CANCELLED),
            ("completed", None),
        ]
        await modeller.close()
        await cluster.stop()


@pytest.mark.async_timeout(240)
async def test_cancel_in_the_accept_phase_frees_the_slot_at_once(tmp_path: Path) -> None:
    """pod-b is offline, so the modeller still waits for accepts when it is cancelled;
    pod-a accepted and holds its only slot until it hears of the cancel (otherwise until its
    start_timeout, 300 s)."""

    specs = _specs(tmp_path, ("pod-a", "pod-b"))
    async with LocalCluster(tmp_path / "cluster", specs) as cluster:
        await cluster.stop_process("pod-b")
        modeller = Modeller(await cluster.connect_modeller())
        progress = Progress(modeller)
        run = asyncio.create_task(modeller.run(Fault("ok"), ["pod-a", "pod-b"]))
        # PREPARING_DATA follows pod-a's JOB_ACCEPT: pod-a holds the task and its slot
        await asyncio.wait_for(progress.event("pod-a", "preparing_data").wait(), 60)
        children = await _task_children(cluster.pid("pod-a"))

        started = time.monotonic()
        cancellation, seconds = await _cancel(modeller, run)

        assert list(cancellation.acknowledged) == ["pod-a"], cancellation
        assert cancellation.acknowledged["pod-a"].reason is AbortReason.CANCELLED_BY_MODELLER
        assert cancellation.unanswered == ["pod-b"]  # offline: told, but no answer yet
        assert seconds < TELL_PODS_SECONDS + 2, "waiting for the offline pod is bounded"
        _, alive = psutil.wait_procs(children, timeout=2)
        assert alive == []
        assert await _task_runs(cluster, "pod-a", 1) == [("aborted", CANCELLED)]

        result = await _next_task_is_not_queued(modeller)
        assert set(result) == {"pod-a"}
        assert time.monotonic() - started < 60, "the slot waited for the start time-out"
        await modeller.close()
        await cluster.stop()
