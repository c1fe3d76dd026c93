"""The simulation engine with real worker processes: correctness, faults, scheduling."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from fedloom import FedAvg, ModelSpec, TrainingConfig, run_local
from fedloom._events import Event, EventCallback, EventKind, virtual_client
from fedloom.algorithms._aggregation import WeightedMean
from fedloom.algorithms.ml import (
    build_model,
    load_arrays,
    local_round,
    round_seed,
    split_validation,
    state_to_arrays,
)
from fedloom.errors import (
    ConfigError,
    InsufficientResourcesError,
    SimulationError,
    UnknownNameError,
)
from fedloom.pod import ArraySource
from fedloom.scheduler import ResourceBudget, ResourceEstimate, TaskStatus
from fedloom.simulation import (
    ClientResources,
    DataSpec,
    ProcessPoolBackend,
    Sampling,
    Simulation,
    SimulationConfig,
    build_client_data,
)
from fedloom.simulation._client import participant

from . import sim_plugins

PLUGIN = sim_plugins.__name__  # imported by the workers (they share this sys.path)
MLP = ModelSpec("mlp", {"in_features": 12, "hidden": [8], "out_features": 4})
DROPOUT_MLP = ModelSpec(
    "mlp", {"in_features": 12, "hidden": [8], "out_features": 4, "dropout": 0.2}
)
TRAINING = TrainingConfig(epochs=1, batch_size=8, learning_rate=0.1)


def synthetic(clients: int = 6, samples: int = 24) -> DataSpec:
    return DataSpec(
        "synthetic", {"clients": clients, "samples": samples, "shape": [12], "classes": 4}
    )


def config(**changes: Any) -> SimulationConfig:
    options: dict[str, Any] = {
        "model": MLP,
        "data": synthetic(),
        "rounds": 2,
        "training": TRAINING,
        "seed": 3,
        "num_parallels": 2,
    }
    return SimulationConfig(**(options | changes))


def run(cfg: SimulationConfig, *, on_event: EventCallback | None = None, **options: Any) -> Any:
    simulation = Simulation(cfg, **options)
    if on_event is not None:
        simulation.subscribe(on_event)
    return simulation.run()


def assert_same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert sorted(a) == sorted(b)
    for key, value in a.items():
        assert value.dtype == b[key].dtype
        assert np.array_equal(value, b[key]), key


def reference_fedavg(cfg: SimulationConfig) -> dict[str, np.ndarray]:
    """The same FedAvg computed in this one process, client after client."""
    data = build_client_data(cfg.data)
    model = build_model(cfg.model, seed=cfg.seed)
    global_arrays = state_to_arrays(model)
    for round_index in range(cfg.rounds):
        mean = WeightedMean(global_arrays)
        for client in cfg.sampling.clients(round_index, data.num_clients, cfg.seed):
            x, y = data.load(client)
            name = participant(client)
            x_train, y_train, x_val, y_val = split_validation(
                x, y, cfg.validation_fraction, name, cfg.seed
            )
            load_arrays(model, global_arrays)
            outcome = local_round(
                model,
                x_train,
                y_train,
                cfg.training,
                seed=round_seed(cfg.seed, name, round_index),
                x_val=x_val,
                y_val=y_val,
            )
            mean.add(name, state_to_arrays(model), outcome.num_samples)
        global_arrays = mean.result()
    return global_arrays


# --- correctness ---------------------------------------------------------------------


def test_equals_a_reference_fedavg_computed_in_one_process() -> None:
    cfg = config(rounds=3, sampling=Sampling("random", fraction=0.5), validation_fraction=0.25)
    result = run(cfg)
    expected = reference_fedavg(cfg)
    for key, value in expected.items():
        np.testing.assert_allclose(result.parameters[key], value, rtol=1e-6, atol=1e-7)
    assert [len(r.clients) for r in result.rounds] == [3, 3, 3]
    assert all(r.metrics["num_samples"] == 3 * 18 for r in result.rounds)
    assert "validation_accuracy" in result.rounds[-1].metrics


def test_a_virtual_client_gives_what_a_pod_with_its_data_gives() -> None:
    """The pods' FedAvg (in-process federation) and the simulation agree."""
    cfg = config(rounds=2, validation_fraction=0.25)
    data = build_client_data(cfg.data)
    pods = {participant(c): ArraySource(*data.load(c)) for c in range(data.num_clients)}
    protocol = FedAvg(
        model=cfg.model,
        rounds=2,
        training=cfg.training,
        seed=cfg.seed,
        validation_fraction=0.25,
    )
    federated = run_local(protocol, pods).result
    simulated = run(cfg)
    for key, value in federated.parameters.items():
        np.testing.assert_allclose(simulated.parameters[key], value, rtol=1e-6, atol=1e-7)


def test_bit_identical_for_one_two_and_three_workers() -> None:
    cfg = config(
        model=DROPOUT_MLP,
        data=synthetic(clients=7),
        rounds=2,
        sampling=Sampling("random", fraction=0.7),
        validation_fraction=0.2,
    )
    results = [run(config_with(cfg, num_parallels=n)) for n in (1, 2, 3)]
    assert_same(results[0].parameters, results[1].parameters)
    assert_same(results[0].parameters, results[2].parameters)
    # the completion order differed at least once, the fold order never does
    workers = {tuple(r.worker for r in res.rounds[0].clients) for res in results}
    assert len(workers) > 1


def test_short_clients_go_several_to_a_message() -> None:
    backend = ProcessPoolBackend()
    cfg = config(data=synthetic(clients=40, samples=8), rounds=3)
    result = run(cfg, backend=backend)
    stats = backend.statistics()
    assert stats["jobs_sent"] == 120
    assert stats["messages_sent"] < 60  # batched once the clients proved short
    reference = run(config_with(cfg, backend="thread"))
    assert_same(reference.parameters, result.parameters)


def test_thread_backend_gives_the_process_pools_result() -> None:
    cfg = config(rounds=2, sampling=Sampling("sequential", per_round=4))
    threaded = config_with(cfg, backend="thread")
    expected = run(cfg).parameters
    # repeated: the thread backend once raced the initial weights against its lanes' models
    for _ in range(4):
        assert_same(expected, run(threaded).parameters)


def test_thread_backend_is_reproducible_with_dropout_too() -> None:
    cfg = config(model=DROPOUT_MLP, rounds=2, num_parallels=3)
    expected = run(cfg).parameters
    for _ in range(2):
        assert_same(expected, run(config_with(cfg, backend="thread")).parameters)


def test_per_client_overrides_apply_to_that_client_only() -> None:
    cfg = config(rounds=1)
    changed = config_with(cfg, client_overrides={2: {"learning_rate": 0.5}})
    plain, tuned = run(cfg, backend=_threads()), run(changed, backend=_threads())
    assert not np.array_equal(plain.parameters["1.weight"], tuned.parameters["1.weight"])


# --- faults ----------------------------------------------------------------------------


def test_a_killed_worker_is_replaced_and_its_clients_rerun(tmp_path: Path) -> None:
    data = DataSpec(
        "flaky",
        {"clients": 6, "samples": 24, "shape": [12], "marker_dir": str(tmp_path), "sleep": 0.3},
    )
    cfg = config(data=data, rounds=2, plugins=(PLUGIN,))
    clean = run(cfg)
    backend = ProcessPoolBackend()
    kill_once = sim_plugins.KillFirstWorkerOnce(backend)
    result = run(cfg, backend=backend, on_event=kill_once)
    killed = kill_once.killed
    assert killed
    assert backend.statistics()["restarts"] == 1
    assert_same(clean.parameters, result.parameters)
    for report in result.rounds:
        assert {r.status for r in report.clients} == {TaskStatus.FINISHED}
    assert not psutil.pid_exists(killed[0]) or psutil.Process(killed[0]).status() == "zombie"


def test_out_of_memory_is_interrupted_and_requeued_with_a_raised_estimate(
    tmp_path: Path,
) -> None:
    data = DataSpec(
        "flaky",
        {"clients": 4, "samples": 24, "shape": [12], "marker_dir": str(tmp_path), "fail": [1]},
    )
    resources = ClientResources(estimate=ResourceEstimate.of(memory="100 MB"), growth=2.0)
    cfg = config(data=data, rounds=1, plugins=(PLUGIN,), resources=resources)
    result = run(cfg)
    record = {r.client: r for r in result.rounds[0].clients}[1]
    assert record.status is TaskStatus.FINISHED
    assert record.attempts == 2
    assert len(record.interrupts) == 1
    assert record.interrupts[0]["error_type"] == "MemoryError"
    assert record.interrupts[0]["estimate"]["memory"] == 100_000_000
    clean = run(config_with(cfg, data=synthetic(clients=4), plugins=(), resources=None))
    assert_same(clean.parameters, result.parameters)


def test_torch_out_of_memory_is_requeued_on_the_thread_backend(tmp_path: Path) -> None:
    data = DataSpec(
        "flaky",
        {
            "clients": 3,
            "samples": 24,
            "shape": [12],
            "marker_dir": str(tmp_path),
            "fail": [0, 2],
            "error": "cuda",
        },
    )
    result = run(config(data=data, rounds=1, backend="thread"))
    records = result.rounds[0].clients
    assert [len(r.interrupts) for r in records] == [1, 0, 1]
    assert records[0].interrupts[0]["error_type"] == "OutOfMemoryError"
    assert all(r.status is TaskStatus.FINISHED for r in records)


def test_a_failing_client_is_left_out_and_reported(tmp_path: Path) -> None:
    data = DataSpec(
        "flaky",
        {
            "clients": 4,
            "samples": 24,
            "shape": [12],
            "marker_dir": str(tmp_path),
            "fail": [2],
            "error": "value",
        },
    )
    result = run(config(data=data, rounds=1, plugins=(PLUGIN,)))
    report = result.rounds[0]
    failed = {r.client: r for r in report.clients}[2]
    assert failed.status is TaskStatus.EXCEPTION
    assert failed.failure is not None and failed.failure.error_type == "ValueError"
    assert report.counts() == {
        "finished": 3,
        "failed": 1,
        "interrupted_and_retried": 0,
        "exited": 0,
    }
    assert report.metrics["num_samples"] == 3 * 24
    written = result.write_reports(tmp_path / "reports")
    assert [p.name for p in written] == ["round-0.json"]
    assert '"ValueError"' in written[0].read_text()


def test_a_missing_dataset_fails_the_round_with_every_clients_reason(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.csv"
    data = DataSpec(
        "partitioned",
        {"dataset": {"kind": "csv", "path": str(missing), "label_column": "y"}, "clients": 3},
    )
    with pytest.raises(SimulationError, match=r"nowhere\.csv"):
        run(config(data=data, rounds=1))


# --- scheduling ------------------------------------------------------------------------


def max_overlap(records: list[Any]) -> int:
    edges = sorted(
        [(r.outcome.started, 1) for r in records] + [(r.outcome.finished, -1) for r in records]
    )
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


@pytest.mark.parametrize(("budget", "allowed"), [("650 MB", 2), ("450 MB", 1)])
def test_never_admits_clients_past_the_memory_budget(
    tmp_path: Path, budget: str, allowed: int
) -> None:
    data = DataSpec(
        "flaky",
        {"clients": 6, "samples": 24, "shape": [12], "marker_dir": str(tmp_path), "sleep": 0.15},
    )
    resources = ClientResources(
        estimate=ResourceEstimate.of(memory="300 MB", cpus=0.1),
        budget=ResourceBudget.of(memory=budget),
    )
    cfg = config(data=data, rounds=1, num_parallels=3, plugins=(PLUGIN,), resources=resources)
    records = run(cfg).rounds[0].clients
    assert all(r.status is TaskStatus.FINISHED for r in records)
    assert max_overlap(records) <= allowed


def test_a_client_that_can_never_fit_is_a_typed_error() -> None:
    resources = ClientResources(
        estimate=ResourceEstimate.of(memory="2 GiB"), budget=ResourceBudget.of(memory="1 GiB")
    )
    with pytest.raises(InsufficientResourcesError):
        run(config(rounds=1, resources=resources, backend="thread"))


@pytest.mark.parametrize("backend", ["thread", "process"])
def test_gpu_estimates_on_cpu_workers_run_on_the_cpu(backend: str) -> None:
    # the budget names a GPU no worker is on: admission must not send clients there
    # (they waited for a worker that never came)
    resources = ClientResources(
        estimate=ResourceEstimate.of(memory="1 MB", gpu_memory="1 MB", cpus=0.1),
        budget=ResourceBudget.of(device_memory={"cuda:0": "1 GiB"}),
    )
    result = run(config(rounds=1, resources=resources, backend=backend, round_timeout=60))
    assert all(r.status is TaskStatus.FINISHED for r in result.rounds[0].clients)


# --- stopping, progress and bad config ------------------------------------------------


def test_stop_ends_the_run_promptly_and_leaves_no_worker(tmp_path: Path) -> None:
    data = DataSpec(
        "flaky",
        {"clients": 8, "samples": 24, "shape": [12], "marker_dir": str(tmp_path), "sleep": 0.5},
    )
    backend = ProcessPoolBackend()
    simulation = Simulation(
        config(data=data, rounds=5, plugins=(PLUGIN,)),
        backend=backend,
    )
    simulation.subscribe(
        lambda e: simulation.stop() if e.kind is EventKind.PARTICIPANT_DONE else None
    )
    began = time.monotonic()
    result = simulation.run()
    assert result.stopped
    assert result.rounds == []
    assert time.monotonic() - began < 30
    pids = [pid for pid in backend.worker_pids() if pid is not None]
    assert pids and not any(
        psutil.pid_exists(p) and psutil.Process(p).status() != "zombie" for p in pids
    )


def test_a_simulation_runs_once() -> None:
    simulation = Simulation(config(rounds=1, backend="thread"))
    simulation.run()
    with pytest.raises(SimulationError, match="runs once"):
        simulation.run()


def test_a_failing_subscriber_does_not_stop_the_simulation() -> None:
    def broken(event: Event) -> None:
        raise RuntimeError("a broken display")

    simulation = Simulation(config(rounds=1, backend="thread"))
    simulation.subscribe(broken)
    result = simulation.run()
    assert len(result.rounds) == 1
    assert (
        simulation.events.statistics().failed_deliveries == simulation.events.statistics().published
    )


def test_progress_events_cover_every_client() -> None:
    events: list[Event] = []
    run(config(rounds=2, backend="thread"), on_event=events.append)
    kinds = [e.kind for e in events]
    assert kinds[0] is EventKind.TASK_STARTED and kinds[-1] is EventKind.TASK_FINISHED
    assert kinds.count(EventKind.ROUND_STARTED) == 2 and kinds.count(EventKind.ROUND_FINISHED) == 2
    # each round: its start, one event per client, its end; all of one task
    per_round = [
        EventKind.ROUND_STARTED,
        *[EventKind.PARTICIPANT_DONE] * 6,
        EventKind.ROUND_FINISHED,
    ]
    assert kinds[1:-1] == per_round * 2
    assert len({e.task for e in events}) == 1
    assert events[0].fields["rounds"] == 2 and events[0].fields["startup_seconds"] > 0
    assert events[-1].fields == {"rounds": 2, "stopped": False}
    assert {e.participant for e in events if e.kind is EventKind.PARTICIPANT_DONE} == {
        virtual_client(c) for c in range(6)
    }
    assert "train_loss" in events[-2].fields["metrics"]
    done = [e for e in events if e.kind is EventKind.PARTICIPANT_DONE and e.fields["round"] == 1]
    assert sorted(e.fields["client"] for e in done) == list(range(6))
    assert done[-1].fields["done"] == done[-1].fields["total"] == 6


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"backend": "mpi"}, ConfigError),
        ({"rounds": 0}, ConfigError),
        ({"num_parallels": 0}, ConfigError),
        ({"device": "tpu"}, ConfigError),
        ({"validation_fraction": 0.95}, ConfigError),
        ({"validation_fraction": "0.1"}, ConfigError),
        ({"round_timeout": "5"}, ConfigError),
        ({"data": "synthetic"}, ConfigError),
        ({"plugins": "a.module"}, ConfigError),  # a string, not a list of names
        ({"resources": {"memory": "1 MB"}}, ConfigError),
    ],
)
def test_bad_config_is_a_typed_error(changes: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        config(**changes)


@pytest.mark.parametrize(
    "changes",
    [
        {"growth": 0.5},
        {"growth": float("nan")},
        {"max_retries": -1},
        {"max_retries": 1.5},
        {"estimate": "1 MB"},
        {"budget": {"memory": "1 GiB"}},
    ],
)
def test_bad_client_resources_are_config_errors(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        ClientResources(**changes)


def test_plugins_may_be_given_as_a_list() -> None:
    assert config(plugins=[PLUGIN]).plugins == (PLUGIN,)


def test_unknown_data_and_bad_sampling_fail_before_any_worker_starts() -> None:
    with pytest.raises(UnknownNameError):
        run(config(data=DataSpec("no-such-data")))
    with pytest.raises(ConfigError, match="no_such_plugin"):
        run(config(plugins=("no_such_plugin",)))
    with pytest.raises(ConfigError, match="in_features"):
        run(config(model=ModelSpec("mlp", {"hidden": [4], "out_features": 2})))
    with pytest.raises(ConfigError):
        Sampling("sequential")
    with pytest.raises(ConfigError):
        Sampling("random", fraction=1.5)


def config_with(cfg: SimulationConfig, **changes: Any) -> SimulationConfig:
    from dataclasses import replace

    return replace(cfg, **changes)


def _threads() -> Any:
    from fedloom.simulation import ThreadPoolBackend

    return ThreadPoolBackend()
