"""What running each task in a spawned child costs a pod.

Runs the same tiny task (the test kit's ``fault`` protocol in ``ok`` mode: one instruction,
one answer) ``--tasks`` times on one pod over the in-memory hub, once in the pod's own
process and once with a spawned child per task, and prints one JSON line:
``spawn_to_ready_s`` (spawn + imports + rebuilding the worker, measured by the pod) and the
whole task's seconds in each mode.

Usage: ``python benchmarks/worker_startup.py [--tasks 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time

import numpy as np

import fedloom.testing._faults  # noqa: F401 - registers the "fault" protocol
from fedloom import LocalFederation
from fedloom.pod import ArraySource
from fedloom.testing._faults import Fault
from fedloom.worker import IsolationSettings, WorkerProcess


async def run_tasks(count: int, isolated: bool) -> tuple[list[float], list[float]]:
    pods = {"pod-a": ArraySource(np.zeros((10, 2), dtype=np.float32))}
    ready: list[float] = []
    original_run = WorkerProcess.run

    async def timed_run(self: WorkerProcess, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            return await original_run(self, *args, **kwargs)
        finally:
            if self.ready_at is not None:
                ready.append(self.ready_at - self.spawned_at)

    WorkerProcess.run = timed_run  # type: ignore[method-assign]
    seconds: list[float] = []
    try:
        async with LocalFederation(
            pods,
            isolation=IsolationSettings() if isolated else None,
            plugins=("fedloom.testing._faults",),
        ) as federation:
            for _ in range(count):
                started = time.perf_counter()
                run = await federation.run(Fault("ok"))
                seconds.append(time.perf_counter() - started)
                assert "pod-a" in run.result
    finally:
        WorkerProcess.run = original_run  # type: ignore[method-assign]
    return seconds, ready


async def main(args: argparse.Namespace) -> dict[str, object]:
    inline, _ = await run_tasks(args.tasks, isolated=False)
    isolated, ready = await run_tasks(args.tasks, isolated=True)
    return {
        "tasks": args.tasks,
        "start_method": "spawn",
        "spawn_to_ready_s": round(statistics.median(ready), 3),
        "task_s_isolated": round(statistics.median(isolated), 3),
        "task_s_inline": round(statistics.median(inline), 4),
        "overhead_s": round(statistics.median(isolated) - statistics.median(inline), 3),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5)
    json.dump(asyncio.run(main(parser.parse_args())), sys.stdout)
    print()
