"""Simulation start-method scenarios, each run in a fresh interpreter by test_sim_start.py.

A test process has gRPC imported and stray threads from other tests, so the pool would
never fork there; a fresh ``python sim_fork_check.py SCENARIO [TMP]`` is the clean
calling process a user's script or ``fedloom sim`` is. It prints one JSON line.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from typing import Any

from sim_plugins import KillFirstWorkerOnce

from fedloom import ModelSpec, TrainingConfig
from fedloom.simulation import (
    DataSpec,
    ProcessPoolBackend,
    Simulation,
    SimulationConfig,
)

THREADS_AT_FORK: list[list[str]] = []
os.register_at_fork(before=lambda: THREADS_AT_FORK.append([t.name for t in threading.enumerate()]))


def config(**changes: Any) -> SimulationConfig:
    options: dict[str, Any] = {
        "model": ModelSpec("mlp", {"in_features": 12, "hidden": [8], "out_features": 4}),
        "data": DataSpec("synthetic", {"clients": 6, "samples": 24, "shape": [12], "classes": 4}),
        "rounds": 2,
        "training": TrainingConfig(epochs=1, batch_size=8, learning_rate=0.1),
        "seed": 3,
        "num_parallels": 2,
    }
    return SimulationConfig(**(options | changes))


def digest(parameters: dict[str, Any]) -> str:
    sha = hashlib.sha256()
    for key in sorted(parameters):
        sha.update(key.encode())
        sha.update(parameters[key].tobytes())
    return sha.hexdigest()


def run(cfg: SimulationConfig, *, on_event: Any = None, **options: Any) -> tuple[str, str]:
    simulation = Simulation(cfg, **options)
    if on_event is not None:
        simulation.subscribe(on_event)
    result = simulation.run()
    return str(getattr(simulation.backend, "start_method", "")), digest(result.parameters)


def scenario_auto() -> dict[str, Any]:
    # big enough (8.4M parameters) that building it takes longer than starting workers
    big = ModelSpec("mlp", {"in_features": 12, "hidden": [2048, 4096], "out_features": 4})
    cfg = config(model=big, rounds=1)
    method, auto = run(cfg)
    threads_at_fork = list(THREADS_AT_FORK)
    _, spawned = run(config(model=big, rounds=1, start_method="spawn"))
    return {
        "start_method": method,
        "threads_at_fork": threads_at_fork,
        "same_as_spawn": auto == spawned,
    }


def scenario_grpc_imported() -> dict[str, Any]:
    import grpc  # noqa: F401

    method, _ = run(config())
    return {"start_method": method, "forks": len(THREADS_AT_FORK)}


def scenario_thread_running() -> dict[str, Any]:
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="user-thread")
    thread.start()
    try:
        method, _ = run(config())
    finally:
        release.set()
        thread.join()
    return {"start_method": method}


def scenario_killed_worker(marker_dir: str) -> dict[str, Any]:
    data = DataSpec(
        "flaky",
        {"clients": 6, "samples": 24, "shape": [12], "marker_dir": marker_dir, "sleep": 0.3},
    )
    cfg = config(data=data, plugins=("sim_plugins",), start_method="fork")
    _, clean = run(cfg)
    backend = ProcessPoolBackend(start_method="fork")
    kill_once = KillFirstWorkerOnce(backend)
    _, result = run(cfg, backend=backend, on_event=kill_once)
    return {
        "killed": len(kill_once.killed),
        "restarts": backend.statistics()["restarts"],
        "same_as_clean": clean == result,
    }


if __name__ == "__main__":
    name = sys.argv[1]
    if name == "auto":
        outcome = scenario_auto()
    elif name == "grpc":
        outcome = scenario_grpc_imported()
    elif name == "thread":
        outcome = scenario_thread_running()
    else:
        outcome = scenario_killed_worker(sys.argv[2])
    print(json.dumps(outcome))
