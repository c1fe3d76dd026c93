"""Every registered strategy gives the same parameters through pods and the simulation.

The same config runs through ``run_local`` (pods whose workers are spawned child
processes, as the pod daemon runs them, talking the real wire codec) and through the
simulation (process pool with 1 and 2 workers, and the thread backend); the parameters
must be bit-identical: one strategy object, one fold kernel, one fold order. So must the
privacy transforms' (clip): one chain, released on the worker in both runtimes.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fedloom import FedAvg, ModelSpec, TrainingConfig, run_local
from fedloom.pod import ArraySource
from fedloom.privacy import TransformSpec
from fedloom.simulation import DataSpec, Simulation, SimulationConfig, build_client_data
from fedloom.simulation._client import participant
from fedloom.strategies import StrategySpec, registered_strategies
from fedloom.worker import IsolationSettings

MLP = ModelSpec("mlp", {"in_features": 6, "hidden": [5], "out_features": 3})
TRAINING = TrainingConfig(epochs=1, batch_size=8, learning_rate=0.1)
DATA = DataSpec("synthetic", {"clients": 3, "samples": 20, "shape": [6], "classes": 3})
# args that make each strategy do something FedAvg does not
ARGS: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "fedprox": {"mu": 0.5},
    "fedadam": {"eta": 0.05},
}
ROUNDS, SEED, VALIDATION = 2, 5, 0.25


def pods_parameters(
    strategy: StrategySpec, privacy: tuple[TransformSpec, ...] = ()
) -> dict[str, torch.Tensor]:
    data = build_client_data(DATA)
    pods = {participant(c): ArraySource(*data.load(c)) for c in range(data.num_clients)}
    protocol = FedAvg(
        model=MLP,
        rounds=ROUNDS,
        training=TRAINING,
        seed=SEED,
        validation_fraction=VALIDATION,
        strategy=strategy,
        privacy=privacy,
    )
    result = run_local(protocol, pods, isolation=IsolationSettings()).result
    return {k: torch.from_numpy(v) for k, v in result.parameters.items()}


def simulated_parameters(
    strategy: StrategySpec, backend: str, workers: int, privacy: tuple[TransformSpec, ...] = ()
) -> dict[str, torch.Tensor]:
    config = SimulationConfig(
        model=MLP,
        data=DATA,
        rounds=ROUNDS,
        training=TRAINING,
        seed=SEED,
        validation_fraction=VALIDATION,
        num_parallels=workers,
        backend=backend,
        strategy=strategy,
        privacy=privacy,
    )
    result = Simulation(config).run()
    return {k: torch.from_numpy(v) for k, v in result.parameters.items()}


def test_every_registered_strategy_is_covered() -> None:
    assert sorted(ARGS) == registered_strategies()


@pytest.mark.parametrize("name", sorted(ARGS))
def test_pods_and_simulation_give_the_same_parameters(name: str) -> None:
    strategy = StrategySpec(name, ARGS[name])
    expected = pods_parameters(strategy)
    runs = {
        "process x1": simulated_parameters(strategy, "process", 1),
        "process x2": simulated_parameters(strategy, "process", 2),
        "thread x2": simulated_parameters(strategy, "thread", 2),
    }
    for label, parameters in runs.items():
        assert sorted(parameters) == sorted(expected), label
        for key, value in expected.items():
            assert torch.equal(parameters[key], value), f"{name}, {label}: {key} differs"
    if name != "fedavg":  # the strategy changed the outcome: the test could tell them apart
        fedavg = simulated_parameters(StrategySpec("fedavg"), "thread", 1)
        assert any(not torch.equal(fedavg[k], v) for k, v in expected.items())


def test_clipped_updates_give_the_same_parameters_through_pods_and_the_simulation() -> None:
    fedavg = StrategySpec("fedavg")
    clip = (TransformSpec("clip", {"max_norm": 0.01}),)  # far below these updates' norms
    expected = pods_parameters(fedavg, clip)
    runs = {
        "process x2": simulated_parameters(fedavg, "process", 2, clip),
        "thread x2": simulated_parameters(fedavg, "thread", 2, clip),
    }
    for label, parameters in runs.items():
        for key, value in expected.items():
            assert torch.equal(parameters[key], value), f"clip, {label}: {key} differs"
    unclipped = simulated_parameters(fedavg, "thread", 1)
    assert any(not torch.equal(unclipped[k], v) for k, v in expected.items())
