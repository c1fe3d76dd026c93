"""The Ray backend of the simulation engine, on a real local Ray instance with 2 CPUs.

One Ray instance serves the whole module (starting Ray costs seconds); each test builds
its own backend, whose actors are killed when its simulation ends.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from fedloom._events import Event, EventKind
from fedloom.algorithms.ml import ModelSpec, build_model
from fedloom.errors import ConfigError, SimulationError
from fedloom.scheduler import ResourceEstimate, TaskStatus
from fedloom.simulation import (
    BackendPlan,
    ClientJob,
    ClientResources,
    DataSpec,
    FailureKind,
    Simulation,
    SimulationConfig,
    SimulationResult,
)
from fedloom.simulation._ray_backend import RayBackend, import_ray, ray_actor_options
from fedloom.simulation._shm import FlatLayout

ray = pytest.importorskip("ray")

DATA = DataSpec("synthetic", {"clients": 6, "samples": 32, "shape": [16]})
# 221 KB of parameters: above Ray's 100 KB inline limit, so updates go through the object store
MODEL = ModelSpec("mlp", {"in_features": 16, "hidden": [2048], "out_features": 10})


def config(backend: str, **changes: Any) -> SimulationConfig:
    settings: dict[str, Any] = {
        "model": MODEL,
        "data": DATA,
        "rounds": 2,
        "backend": backend,
        "num_parallels": 2,
        "seed": 7,
        "round_timeout": 120.0,
    }
    return SimulationConfig(**(settings | changes))


@pytest.fixture(scope="module", autouse=True)
def local_ray() -> Iterator[None]:
    # a test elsewhere may have left Ray up; this module wants its own 2-CPU instance
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def thread_result() -> SimulationResult:
    return Simulation(config("thread")).run()


def plan_for(data: DataSpec) -> BackendPlan:
    layout = FlatLayout.of(build_model(MODEL).state_dict())
    return BackendPlan(config("ray", data=data).runner_plan(), layout, ("cpu", "cpu"))


def assert_same_parameters(left: SimulationResult, right: SimulationResult) -> None:
    assert left.parameters.keys() == right.parameters.keys()
    for key, value in left.parameters.items():
        assert np.array_equal(value, right.parameters[key]), key


def assert_every_client_folded(result: SimulationResult, rounds: int) -> None:
    assert len(result.rounds) == rounds
    for report in result.rounds:
        assert [r.status for r in report.clients] == [TaskStatus.FINISHED] * len(report.clients)
        assert len(report.clients) == 6


def test_ray_gives_the_thread_backends_parameters_bit_for_bit(
    thread_result: SimulationResult,
) -> None:
    result = Simulation(config("ray")).run()

    assert_every_client_folded(result, 2)
    assert_same_parameters(result, thread_result)
    assert ray.is_initialized()  # the backend joined the module's instance: it stays up


def test_the_ray_backend_conforms() -> None:
    from fedloom.testing import check_backend

    check_backend(RayBackend)


def test_per_client_resources_become_actor_options() -> None:
    estimate = ResourceEstimate.of(cpus=1, memory="200 MB")
    backend = RayBackend(resources=ClientResources(estimate=estimate))
    seen: list[list[dict[str, float]]] = []

    def on_event(event: Event) -> None:
        if event.kind is EventKind.TASK_STARTED:
            seen.append(backend.worker_resources())

    cfg = config("ray", rounds=1, resources=ClientResources(estimate=estimate))
    simulation = Simulation(cfg, backend=backend)
    simulation.subscribe(on_event)
    result = simulation.run()

    assert_every_client_folded(result, 1)
    assert seen == [[{"CPU": 1.0, "memory": float(estimate.memory)}] * 2]


def test_actor_options_ask_for_a_share_of_a_gpu() -> None:
    estimate = ResourceEstimate.of(cpus=2)

    assert ray_actor_options(estimate, "cpu") == {"num_cpus": 2.0}
    assert ray_actor_options(estimate, "cuda:0", workers_on_device=1)["num_gpus"] == 1.0
    assert ray_actor_options(estimate, "cuda:1", workers_on_device=3)["num_gpus"] == 0.3333
    with pytest.raises(ConfigError, match="workers_on_device"):
        ray_actor_options(estimate, "cuda:0", workers_on_device=0)


def test_an_actor_killed_mid_round_is_replaced_and_every_client_folded(
    thread_result: SimulationResult,
) -> None:
    backend = RayBackend()
    killed: list[Any] = []

    def on_event(event: Event) -> None:
        if event.kind is EventKind.PARTICIPANT_DONE and not killed:
            handle = backend.actor_handles()[0]
            killed.append(handle)
            ray.kill(handle)

    simulation = Simulation(config("ray"), backend=backend)
    simulation.subscribe(on_event)
    result = simulation.run()

    assert killed
    statistics = backend.statistics()
    assert statistics["restarts"] >= 1
    assert statistics["reruns"] >= 1  # at least one job was lost with the actor and re-run
    assert backend.actor_handles()[0] is not killed[0]
    assert_every_client_folded(result, 2)
    # the re-run clients compute the very same updates
    assert_same_parameters(result, thread_result)


def test_stop_ends_the_simulation_with_stopped_clients() -> None:
    cfg = config(
        "ray",
        rounds=5,
        data=DataSpec("synthetic", {"clients": 6, "samples": 2048, "shape": [16]}),
    )
    simulation: Simulation | None = None

    def on_event(event: Event) -> None:
        if event.kind is EventKind.PARTICIPANT_DONE and event.fields["round"] == 1:
            assert simulation is not None
            # stop() is safe from any thread: call it from another one, as a UI would
            stopper = threading.Thread(target=simulation.stop)
            stopper.start()
            stopper.join()

    simulation = Simulation(cfg)
    simulation.subscribe(on_event)
    result = simulation.run()

    assert result.stopped
    assert len(result.rounds) == 1  # round 0 completed; the stopped round 1 is left out


def test_stop_cancels_the_jobs_in_flight_and_later_jobs_never_run() -> None:
    # one long job per actor: stop() comes long before either could finish
    plan = plan_for(DataSpec("synthetic", {"clients": 3, "samples": 50_000, "shape": [16]}))
    backend = RayBackend()
    backend.start(plan)
    try:
        backend.broadcast(
            {name: torch.from_numpy(np.zeros(n, dtype=name)) for name, n in plan.layout.groups}
        )
        backend.submit([ClientJob(0, 0), ClientJob(1, 0)])
        backend.stop()
        backend.submit([ClientJob(2, 0)])
        results = [backend.next_result(timeout=60.0) for _ in range(3)]
    finally:
        backend.close()

    assert sorted(r.job.client for r in results) == [0, 1, 2]
    assert all(r.failure is not None for r in results), [r.outcome for r in results]
    assert {r.failure.kind for r in results if r.failure} == {FailureKind.STOPPED}


def test_actors_that_cannot_be_placed_fail_start_with_the_reason() -> None:
    backend = RayBackend(actor_options={"num_cpus": 64}, start_timeout=1.0)

    with pytest.raises(SimulationError, match=r"not placed.*num_cpus"):
        Simulation(config("ray"), backend=backend).run()
    assert backend.actor_handles() == [None, None]  # close() killed the pending actors


def test_an_actor_whose_runner_cannot_build_fails_start_naming_why() -> None:
    # the driver never builds client data, so only the actors meet this bad spec
    bad = DataSpec("synthetic", {"clients": 6, "samples": 32, "shape": [16], "bogus": 1})
    backend = RayBackend()

    with pytest.raises(SimulationError, match=r"could not start.*bogus"):
        backend.start(plan_for(bad))


def test_without_ray_installed_the_backend_asks_for_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)

    with pytest.raises(ConfigError, match=r"fedloom\[ray\]"):
        import_ray()
    with pytest.raises(ConfigError, match=r"fedloom\[ray\]"):
        RayBackend().start(plan_for(DATA))


def test_importing_the_simulation_package_does_not_import_ray() -> None:
    code = "import sys, fedloom.simulation; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
