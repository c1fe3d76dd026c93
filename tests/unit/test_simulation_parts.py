"""The simulation engine's parts, in one process: fold, shared blocks, sampling, config."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedloom.algorithms._aggregation import WeightedMean
from fedloom.algorithms.ml import ModelSpec, build_model, state_to_arrays
from fedloom.errors import AggregationError, ConfigError, DataError, UnknownNameError
from fedloom.simulation import (
    DataSpec,
    OrderedFold,
    Sampling,
    SimulationConfig,
    build_client_data,
)
from fedloom.simulation._backend import worker_devices
from fedloom.simulation._config import load_simulation_file, simulation_from_mapping
from fedloom.simulation._shm import FlatLayout, SharedBlock, alias_module

MLP = ModelSpec("mlp", {"in_features": 6, "hidden": [5], "out_features": 3})


def flat(values: list[float], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {"g": torch.tensor(values, dtype=dtype)}


# --- OrderedFold -------------------------------------------------------------------------


def test_fold_equals_weighted_mean_in_any_arrival_order() -> None:
    rng = np.random.default_rng(0)
    updates = {c: rng.standard_normal(50).astype(np.float32) for c in range(5)}
    weights = {0: 3.0, 1: 10.0, 2: 1.0, 3: 7.0, 4: 2.0}
    reference = WeightedMean({"g": np.zeros(50, np.float32)})
    for c in range(5):
        reference.add(str(c), {"g": updates[c]}, weights[c])
    expected = reference.result()["g"]
    results = []
    for order in itertools.islice(itertools.permutations(range(5)), 0, 120, 7):
        fold = OrderedFold(flat([0.0] * 50), range(5))
        for c in order:
            fold.offer(c, {"g": torch.from_numpy(updates[c])}, weights[c])
        target = flat([0.0] * 50)
        fold.result_into(target)
        results.append(target["g"].numpy())
    for result in results:
        assert np.array_equal(result, results[0])  # bit-identical whatever the order
    np.testing.assert_allclose(results[0], expected, rtol=1e-6)


def test_fold_adds_only_when_every_earlier_client_is_in() -> None:
    fold = OrderedFold(flat([0.0]), [4, 1, 9])
    assert fold.offer(1, flat([1.0]), 1.0) == []
    assert fold.offer(9, flat([2.0]), 1.0) == []
    assert fold.pending == [4, 1, 9]
    assert fold.skip(4) == [1, 9]
    assert fold.done and fold.folded == [1, 9]
    target = flat([0.0])
    fold.result_into(target)
    assert target["g"].item() == 1.5


def test_fold_rejects_strangers_repeats_and_bad_weights() -> None:
    with pytest.raises(AggregationError):
        OrderedFold(flat([0.0]), [1, 1])
    fold = OrderedFold(flat([0.0]), [1, 2])
    with pytest.raises(AggregationError):
        fold.offer(3, flat([1.0]), 1.0)
    fold.offer(2, flat([1.0]), 1.0)
    with pytest.raises(AggregationError):
        fold.offer(2, flat([1.0]), 1.0)
    for weight in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(AggregationError):
            fold.offer(1, flat([1.0]), weight)
    with pytest.raises(AggregationError, match="waits"):
        fold.result_into(flat([0.0]))


def test_fold_of_nothing_is_an_error() -> None:
    fold = OrderedFold(flat([0.0]), [1])
    fold.skip(1)
    with pytest.raises(AggregationError, match="no update"):
        fold.result_into(flat([0.0]))


def test_fold_rounds_integer_and_boolean_groups() -> None:
    groups = {"i": torch.zeros(2, dtype=torch.int64), "b": torch.zeros(2, dtype=torch.bool)}
    fold = OrderedFold(groups, [0, 1])
    fold.offer(0, {"i": torch.tensor([1, 10]), "b": torch.tensor([True, False])}, 1.0)
    fold.offer(1, {"i": torch.tensor([2, 20]), "b": torch.tensor([True, True])}, 3.0)
    target = {"i": torch.zeros(2, dtype=torch.int64), "b": torch.zeros(2, dtype=torch.bool)}
    fold.result_into(target)
    assert target["i"].tolist() == [2, 18]  # (1+6)/4 = 1.75 -> 2, (10+60)/4 = 17.5 -> 18
    assert target["b"].tolist() == [True, True]


# --- flat layouts and shared blocks ---------------------------------------------------


def test_layout_packs_unpacks_and_aliases_a_module() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    arrays = state_to_arrays(model)
    layout = FlatLayout.of(arrays)
    assert dict(layout.groups) == {"float32": 3 * 2 + 2 + 4 * 2, "int64": 1}
    block = SharedBlock.create(layout)
    try:
        layout.pack(arrays, block.flats)
        for key, value in layout.unpack(block.flats).items():
            assert np.array_equal(value, arrays[key])
        other = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
        alias_module(other, block.views())
        with torch.no_grad():
            other[0].weight.add_(1.0)
        assert np.array_equal(
            layout.unpack(block.flats)["0.weight"], arrays["0.weight"] + 1.0
        )  # the module's parameters live in the block
        attached = SharedBlock.attach(layout, block.name)
        assert torch.equal(attached.flats["float32"], block.flats["float32"])
        attached.close()
    finally:
        block.close()


def test_layout_refuses_arrays_that_do_not_fit() -> None:
    arrays = state_to_arrays(build_model(MLP))
    layout = FlatLayout.of(arrays)
    flats = {name: torch.zeros(n) for name, n in layout.groups}
    with pytest.raises(ConfigError, match="missing"):
        layout.pack({k: v for k, v in arrays.items() if k != "1.bias"}, flats)
    wrong = dict(arrays) | {"1.bias": arrays["1.bias"].astype(np.float64)}
    with pytest.raises(ConfigError, match="expected float32"):
        layout.pack(wrong, flats)
    with pytest.raises(ConfigError):
        FlatLayout.of({})
    with pytest.raises(ConfigError, match="no shared-memory block"):
        SharedBlock.attach(layout, "fedloom-sim-does-not-exist")


def test_a_block_knows_when_it_holds_nan() -> None:
    layout = FlatLayout.of({"w": np.zeros(4, np.float32)})
    block = SharedBlock.create(layout)
    try:
        assert block.is_finite()
        block.flats["float32"][2] = float("nan")
        assert not block.is_finite()
        block.flats["float32"].fill_(3e38)  # the sum overflows; the values are finite
        assert block.is_finite()
    finally:
        block.close()


# --- sampling, data and devices -------------------------------------------------------


def test_sampling_kinds() -> None:
    assert Sampling().clients(3, 4, seed=0) == [0, 1, 2, 3]
    sequential = Sampling("sequential", per_round=10)
    assert sequential.clients(0, 20, 0) == list(range(10))
    assert sequential.clients(1, 20, 0) == list(range(10, 20))
    assert sequential.clients(2, 20, 0) == list(range(10))
    random = Sampling("random", fraction=0.3)
    first = random.clients(0, 10, seed=5)
    assert len(first) == 3 and first == sorted(first)
    assert random.clients(0, 10, seed=5) == first
    assert any(random.clients(r, 10, seed=5) != first for r in range(1, 6))
    assert Sampling("random", per_round=4).clients(0, 10, 1) != []


@pytest.mark.parametrize(
    "config",
    [
        {"kind": "lottery"},
        {"kind": "random", "fraction": 0},
        {"kind": "sequential"},
        {"kind": "all", "per_round": 0},
        {"kind": "all", "extra": 1},
        "all",
    ],
)
def test_bad_sampling_is_a_config_error(config: Any) -> None:
    with pytest.raises(ConfigError):
        Sampling.from_config(config)


def test_synthetic_clients_follow_the_benchmark_recipe() -> None:
    data = build_client_data(DataSpec("synthetic", {"clients": 3, "samples": 5, "shape": [4]}))
    x, y = data.load(2)
    generator = torch.Generator().manual_seed(1002)
    assert np.array_equal(x, torch.randn((5, 4), generator=generator).numpy())
    assert np.array_equal(y, torch.randint(0, 10, (5,), generator=generator).numpy())
    with pytest.raises(DataError):
        data.load(3)


def test_partitioned_clients_cover_the_dataset_once(tmp_path: Path) -> None:
    csv = tmp_path / "data.csv"
    rows = ["a,b,y"] + [f"{i},{i * 2},{i % 3}" for i in range(30)]
    csv.write_text("\n".join(rows) + "\n")
    spec = DataSpec(
        "partitioned",
        {"dataset": {"kind": "csv", "path": str(csv), "label_column": "y"}, "clients": 4},
    )
    data = build_client_data(spec)
    parts = [data.load(c) for c in range(4)]
    assert sorted(np.concatenate([x[:, 0] for x, _ in parts]).tolist()) == list(range(30))
    digits = build_client_data(DataSpec("digits", {"clients": 5, "partition": "dirichlet"}))
    assert sum(len(digits.load(c)[0]) for c in range(5)) == 1797


@pytest.mark.parametrize(
    "spec",
    [
        DataSpec("synthetic", {"clients": 0, "samples": 5, "shape": [4]}),
        DataSpec("synthetic", {"clients": 2, "samples": 5}),
        DataSpec("synthetic", {"clients": 2, "samples": 5, "shape": "4"}),
        DataSpec("digits", {"clients": 2, "partition": "by-magic"}),
        DataSpec("partitioned", {"clients": 2, "dataset": "data.csv"}),
    ],
)
def test_bad_client_data_is_a_config_error(spec: DataSpec) -> None:
    with pytest.raises(ConfigError):
        build_client_data(spec)


def test_unknown_client_data_is_named() -> None:
    with pytest.raises(UnknownNameError):
        build_client_data(DataSpec("telepathy"))


def test_workers_get_devices_round_robin() -> None:
    assert worker_devices("cpu", 1, 3) == ["cpu", "cpu", "cpu"]
    assert worker_devices("cuda", 2, 3) == ["cuda:0", "cuda:1", "cuda:0"]
    assert worker_devices("cuda:1", 1, 2) == ["cuda:1", "cuda:1"]


# --- simulation files -----------------------------------------------------------------

GOOD = """
[simulation]
rounds = 2
backend = "thread"
num_parallels = 3
[model]
name = "mlp"
config = { in_features = 6, hidden = [5], out_features = 3 }
[data]
name = "synthetic"
clients = 4
samples = 8
shape = [6]
[training]
batch_size = 4
[sampling]
kind = "random"
fraction = 0.5
[resources]
memory = "300 MB"
budget_memory = "1 GiB"
[clients.2]
learning_rate = 0.5
"""


def test_a_simulation_file_is_read_into_a_config(tmp_path: Path) -> None:
    path = tmp_path / "sim.toml"
    path.write_text(GOOD)
    loaded = load_simulation_file(path)
    config = loaded.config
    assert isinstance(config, SimulationConfig)
    assert (config.rounds, config.backend, config.num_parallels) == (2, "thread", 3)
    assert config.data == DataSpec("synthetic", {"clients": 4, "samples": 8, "shape": [6]})
    assert config.sampling == Sampling("random", fraction=0.5)
    assert config.resources is not None
    assert config.resources.estimate.memory == 300_000_000
    assert config.resources.budget is not None and config.resources.budget.memory == 2**30
    assert config.client_overrides == {2: {"learning_rate": 0.5}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"nonsense": {}}, "unknown sections"),
        ({"simulation": {"rounds": 2, "speed": "fast"}}, "speed"),
        ({"simulation": {"backend": "mpi"}}, "mpi"),
        ({"resources": {"memory": "12 parsecs"}}, "parsecs"),
        ({"clients": {"two": {"learning_rate": 1.0}}}, "client number"),
        ({"sampling": {"kind": "lottery"}}, "lottery"),
        ({"simulation": {"rounds": "3"}}, "rounds"),
        ({"simulation": {"device": 5}}, "device"),
        ({"simulation": {"validation_fraction": "x"}}, "validation_fraction"),
        ({"simulation": {"round_timeout": "5"}}, "round_timeout"),
        ({"simulation": {"round_timeout": float("inf")}}, "round_timeout"),
        ({"simulation": {"start_method": 7}}, "start_method"),
        ({"resources": {"memory": "1 MB", "max_retries": "x"}}, r"\[resources\] max_retries"),
        ({"resources": {"memory": "1 MB", "max_retries": -3}}, "max_retries"),
        ({"resources": {"memory": "1 MB", "growth": "abc"}}, r"\[resources\] growth"),
        ({"resources": {"memory": "1 MB", "growth": 0.5}}, "growth"),
        ({"clients": {"2": {"learning_rate": "x"}}}, "client 2's overrides: learning_rate"),
        ({"clients": {"2": {"speed": 1}}}, "client 2's overrides: unknown"),
    ],
)
def test_bad_simulation_files_are_config_errors(change: dict[str, Any], message: str) -> None:
    import tomllib

    raw = tomllib.loads(GOOD) | change
    with pytest.raises(ConfigError, match=message):
        simulation_from_mapping(raw)


def test_unreadable_simulation_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_simulation_file(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[simulation\nrounds = ")
    with pytest.raises(ConfigError, match="TOML"):
        load_simulation_file(bad)
    no_model = tmp_path / "no_model.toml"
    no_model.write_text('[data]\nname = "digits"\nclients = 2\n')
    with pytest.raises(ConfigError, match=r"\[model\]"):
        load_simulation_file(no_model)
