"""How the process pool starts its workers: forked when safe, spawned otherwise."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import torch

from fedloom import ModelSpec, TrainingConfig
from fedloom._events import Event
from fedloom.errors import ConfigError
from fedloom.simulation import (
    DataSpec,
    ProcessPoolBackend,
    Simulation,
    SimulationConfig,
)
from fedloom.simulation._backend import BackendPlan
from fedloom.simulation._client import RunnerPlan
from fedloom.simulation._process_pool import fork_hazard
from fedloom.simulation._shm import FlatLayout

SCRIPT = Path(__file__).with_name("sim_fork_check.py")
MLP = ModelSpec("mlp", {"in_features": 12, "hidden": [8], "out_features": 4})
DATA = DataSpec("synthetic", {"clients": 6, "samples": 24, "shape": [12], "classes": 4})


def scenario(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=SCRIPT.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def plan(devices: tuple[str, ...] = ("cpu", "cpu"), torch_threads: int = 1) -> BackendPlan:
    runner = RunnerPlan(
        model=MLP, data=DATA, training=TrainingConfig(), torch_threads=torch_threads
    )
    layout = FlatLayout.of({"w": torch.zeros(3)})
    return BackendPlan(runner, layout, devices)


# --- in a clean process: what a user's script gets ---------------------------------


def test_a_clean_process_forks_its_workers_with_no_other_thread_alive() -> None:
    result = scenario("auto")
    assert result["start_method"] == "fork"
    # the initial weights are built before the fork, not in a thread during it
    assert result["threads_at_fork"]
    assert all(names == ["MainThread"] for names in result["threads_at_fork"])
    assert result["same_as_spawn"]


def test_workers_are_spawned_once_grpc_is_imported() -> None:
    assert scenario("grpc") == {"start_method": "spawn", "forks": 0}


def test_workers_are_spawned_while_another_thread_runs() -> None:
    assert scenario("thread") == {"start_method": "spawn"}


def test_a_killed_forked_worker_is_replaced_and_nothing_is_lost(tmp_path: Path) -> None:
    result = scenario("killed", str(tmp_path))
    assert result == {"killed": 1, "restarts": 1, "same_as_clean": True}


# --- the rules ---------------------------------------------------------------------


def test_fork_hazards_are_named() -> None:
    hazard = fork_hazard(plan(devices=("cpu", "cuda:0")))
    assert hazard is not None and "CUDA" in hazard
    hazard = fork_hazard(plan(torch_threads=2))
    assert hazard is not None and "OpenMP" in hazard


def test_cuda_initialised_in_this_process_is_a_fork_hazard(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    hazard = fork_hazard(plan())
    assert hazard is not None and "CUDA is initialised" in hazard


def test_a_running_thread_is_a_fork_hazard() -> None:
    release = threading.Event()
    thread = threading.Thread(target=release.wait, name="busy-user-thread")
    thread.start()
    try:
        hazard = fork_hazard(plan())
    finally:
        release.set()
        thread.join()
    assert hazard is not None and "busy-user-thread" in hazard


def test_grpc_or_ray_imported_is_a_fork_hazard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    for name in ("grpc", "ray"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    assert fork_hazard(plan()) is None
    monkeypatch.setitem(sys.modules, "ray", sys)
    hazard = fork_hazard(plan())
    assert hazard is not None and "ray" in hazard


def test_an_explicit_start_method_is_kept_and_a_wrong_one_is_a_typed_error() -> None:
    backend = ProcessPoolBackend(start_method="spawn")
    assert backend.forks(plan()) is False
    assert backend.start_method == "spawn"
    with pytest.raises(ConfigError, match="start_method"):
        ProcessPoolBackend(start_method="vfork")
    with pytest.raises(ConfigError, match="start_method"):
        SimulationConfig(model=MLP, data=DATA, start_method="threads")


def test_the_engine_folds_on_one_torch_thread_and_restores_the_callers() -> None:
    seen: list[int] = []

    def record(event: Event) -> None:
        seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        simulation = Simulation(SimulationConfig(model=MLP, data=DATA, rounds=1))
        simulation.subscribe(record)
        simulation.run()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}
