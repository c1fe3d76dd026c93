"""A pod SIGKILLed mid-stream during batched inference, with real processes over gRPC.

A killed pod never sends TASK_ABORT: the modeller only notices its silence. The task's
request policy decides, within its time-out, whether the others go on (discard) or the task
stops naming the pod (stop).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedloom import Modeller, ModelSpec, RequestPolicy
from fedloom._cluster import LocalCluster, PodSpec
from fedloom._events import Event, EventKind
from fedloom.errors import AbortReason, PodResponseError
from fedloom.protocols import BatchedInference
from fedloom.session import OnTimeout

from .conftest import ended_task_runs

MODEL = ModelSpec("mlp", {"in_features": 8 * 8 * 3, "hidden": [4], "out_features": 2})
FILES = 600
TIMEOUT = 10.0
"""The policy's time-out: room for the children to start (torch) on a loaded machine."""


def _folder(root: Path, seed: int) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for index in range(FILES):
        pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{index:04d}.png")
    return root


class Killer:
    """Kills ``pod``'s daemon (SIGKILL) once the modeller hears it start batch 3."""

    def __init__(self, cluster: LocalCluster, pod: str) -> None:
        self.cluster = cluster
        self.pod = pod
        self.killed_at: float | None = None

    def __call__(self, event: Event) -> None:
        third = event.kind is EventKind.BATCH_STARTED and event.fields["batch"] == 3
        if event.participant == self.pod and third and self.killed_at is None:
            os.kill(self.cluster.pid(self.pod), signal.SIGKILL)
            self.killed_at = time.monotonic()


@pytest.mark.async_timeout(240)
async def test_a_pod_killed_mid_stream_is_dropped_or_stops_the_task(tmp_path: Path) -> None:
    specs = {
        pod: PodSpec(
            datasets={
                "default": {
                    "kind": "folder",
                    "path": str(_folder(tmp_path / pod, seed)),
                    "pattern": "*.png",
                }
            }
        )
        for seed, pod in enumerate(("pod-a", "pod-b"))
    }
    task = BatchedInference(MODEL, batch_size=5)

    async with LocalCluster(tmp_path / "cluster", specs) as cluster:
        modeller = Modeller(await cluster.connect_modeller())
        killer = Killer(cluster, "pod-b")
        with modeller.subscribe(killer):
            run = await modeller.run(
                task, ["pod-a", "pod-b"], policy=RequestPolicy(timeout=TIMEOUT)
            )
        assert killer.killed_at is not None
        discard_after_kill = time.monotonic() - killer.killed_at

        await cluster.start_pod("pod-b")  # back, to be killed again
        killer = Killer(cluster, "pod-b")
        with modeller.subscribe(killer), pytest.raises(PodResponseError) as stopped:
            await modeller.run(
                task,
                ["pod-a", "pod-b"],
                policy=RequestPolicy(timeout=TIMEOUT, on_timeout=OnTimeout.STOP),
            )
        assert killer.killed_at is not None
        stop_after_kill = time.monotonic() - killer.killed_at
        await modeller.close()
        # pod-a reads the TASK_ABORT and records it before it is stopped
        await ended_task_runs(cluster.pod_config_path("pod-a").parent / "pod.sqlite", 2)
        await cluster.stop()
    error = stopped.value
    # (before the fix the stream waited forever for the killed pod: the async_timeout fails)

    # discard: pod-b is dropped as the other requests drop a silent pod; pod-a finishes
    assert run.dropped == ["pod-b"]
    assert run.aborted["pod-b"].reason is AbortReason.WORKER_UNRESPONSIVE
    assert "'batches'" in run.aborted["pod-b"].message
    assert len(run.result.rows["pod-a"]) == FILES
    assert "pod-a" not in run.aborted
    assert TIMEOUT - 1 < discard_after_kill < TIMEOUT + 5, discard_after_kill

    # stop: the task stops naming pod-b, within the time-out
    assert set(error.failed_pods) == {"pod-b"}
    assert error.failed_pods["pod-b"] == f"no message for {TIMEOUT:g} s"
    assert "'batches'" in str(error)
    assert stop_after_kill < TIMEOUT + 5, stop_after_kill
