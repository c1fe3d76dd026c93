"""Tests for fedloom.algorithms.ml._training."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from torch import nn

from fedloom.algorithms.ml import (
    ModelSpec,
    TrainingConfig,
    build_model,
    evaluate,
    state_to_arrays,
    train_local,
)
from fedloom.errors import ConfigError, DataError, EmptyDatasetError

Array = npt.NDArray[Any]
MLP = ModelSpec("mlp", {"in_features": 2, "hidden": [16], "out_features": 2, "dropout": 0.1})


def separable(n: int = 200, seed: int = 0) -> tuple[Array, Array]:
    """Two Gaussian blobs far apart: class = which side of x0 + x1 = 0."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    centers = np.where(y[:, None] == 1, 2.0, -2.0)
    x = (centers + rng.normal(scale=0.5, size=(n, 2))).astype(np.float32)
    return x, y


# --- TrainingConfig ---------------------------------------------------------------------


def test_config_defaults_and_round_trip() -> None:
    config = TrainingConfig()
    assert config.to_config() == {
        "epochs": 1,
        "batch_size": 32,
        "optimizer": "sgd",
        "learning_rate": 0.01,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "shuffle": True,
    }
    custom = TrainingConfig(epochs=3, optimizer="adam", learning_rate=1, shuffle=False)
    assert isinstance(custom.learning_rate, float)
    assert TrainingConfig.from_config(custom.to_config()) == custom
    assert TrainingConfig.from_config({"epochs": 2}) == TrainingConfig(epochs=2)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"learning_rate": -0.1}, "learning_rate must be > 0, got -0.1"),
        ({"learning_rate": 0}, "learning_rate must be > 0, got 0"),
        ({"learning_rate": math.nan}, "learning_rate must be finite"),
        ({"learning_rate": "0.1"}, "learning_rate must be a number"),
        ({"epochs": 0}, "epochs must be > 0, got 0"),
        ({"epochs": 1.5}, "epochs must be an int"),
        ({"epochs": True}, "epochs must be an int"),
        ({"batch_size": -4}, "batch_size must be > 0, got -4"),
        ({"optimizer": "rmsprop"}, "optimizer must be one of sgd, adam, got 'rmsprop'"),
        ({"momentum": -0.5}, "momentum must be >= 0, got -0.5"),
        ({"momentum": 1.0}, "momentum must be < 1"),
        ({"optimizer": "adam", "momentum": 0.9}, "momentum only applies to optimizer 'sgd'"),
        ({"weight_decay": -1e-4}, "weight_decay must be >= 0"),
        ({"weight_decay": math.inf}, "weight_decay must be finite"),
        ({"shuffle": 1}, "shuffle must be true or false"),
    ],
)
def test_invalid_config(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        TrainingConfig(**kwargs)
    assert message in str(info.value)


def test_from_config_is_strict() -> None:
    with pytest.raises(ConfigError, match="'lr'"):
        TrainingConfig.from_config({"lr": 0.1})
    with pytest.raises(ConfigError, match="mapping"):
        TrainingConfig.from_config([("epochs", 1)])
    with pytest.raises(ConfigError, match="learning_rate must be > 0"):
        TrainingConfig.from_config({"learning_rate": -0.1})


# --- train_local ------------------------------------------------------------------------


def test_train_local_reduces_loss() -> None:
    x, y = separable()
    model = build_model(MLP, seed=0)
    before = evaluate(model, x, y)
    config = TrainingConfig(epochs=5, batch_size=16, learning_rate=0.1, momentum=0.5)
    metrics = train_local(model, x, y, config, seed=1)
    after = evaluate(model, x, y)
    assert set(metrics) == {"loss", "accuracy", "num_samples"}
    assert metrics["num_samples"] == 200.0
    assert after["loss"] < before["loss"] / 2
    assert after["accuracy"] >= 0.95
    assert metrics["accuracy"] >= 0.9
    assert model.training  # the mode is restored


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_train_local_is_bit_identical_with_the_same_seed(optimizer: str) -> None:
    x, y = separable(100)
    config = TrainingConfig(epochs=2, batch_size=8, optimizer=optimizer, learning_rate=0.05)
    results = []
    for _ in range(2):
        model = build_model(MLP, seed=3)
        metrics = train_local(model, x, y, config, seed=11)
        results.append((metrics, state_to_arrays(model)))
    (metrics_a, state_a), (metrics_b, state_b) = results
    assert metrics_a == metrics_b
    for key, value in state_a.items():
        assert value.tobytes() == state_b[key].tobytes()

    model = build_model(MLP, seed=3)
    train_local(model, x, y, config, seed=12)
    changed = state_to_arrays(model)
    assert any(changed[k].tobytes() != v.tobytes() for k, v in state_a.items())


def test_train_local_keeps_global_rng() -> None:
    x, y = separable(50)
    torch.manual_seed(99)
    state = torch.get_rng_state()
    train_local(build_model(MLP, seed=0), x, y, TrainingConfig(), seed=5)
    assert torch.equal(torch.get_rng_state(), state)


def test_on_batch_is_called_after_each_batch() -> None:
    x, y = separable(10)
    calls: list[tuple[int, int, float]] = []
    config = TrainingConfig(epochs=2, batch_size=4)
    metrics = train_local(
        build_model(MLP, seed=0), x, y, config, seed=0, on_batch=lambda *a: calls.append(a)
    )
    assert [(e, b) for e, b, _ in calls] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert all(isinstance(loss, float) and loss > 0 for _, _, loss in calls)
    # the reported loss is the sample-weighted mean over the last epoch's batches
    expected = (calls[3][2] * 4 + calls[4][2] * 4 + calls[5][2] * 2) / 10
    assert metrics["loss"] == pytest.approx(expected, rel=1e-12)


def test_no_shuffle_visits_rows_in_order() -> None:
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    y = np.zeros(6, dtype=np.int64)
    seen: list[list[float]] = []

    class Spy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, batch: torch.Tensor) -> torch.Tensor:
            seen.append(batch[:, 0].tolist())
            return self.fc(batch)  # type: ignore[no-any-return]

    train_local(Spy(), x, y, TrainingConfig(batch_size=4, shuffle=False), seed=0)
    assert seen == [[0.0, 2.0, 4.0, 6.0], [8.0, 10.0]]


@pytest.mark.parametrize(
    ("x", "y", "error", "match"),
    [
        (np.zeros((0, 2), np.float32), np.zeros(0, np.int64), EmptyDatasetError, "empty"),
        (np.zeros((3, 2), np.float32), np.zeros(2, np.int64), DataError, "3 rows but y has 2"),
        (np.zeros((2, 2), np.float32), np.zeros(2, np.float32), DataError, "integer class"),
        (np.zeros((2, 2), np.float32), np.array([0, -1]), DataError, ">= 0"),
        (np.zeros((2, 2), np.float32), np.array([0, 2]), DataError, "label 2 is out of range"),
        (np.full((2, 2), np.nan, np.float32), np.zeros(2, np.int64), DataError, "NaN"),
        (np.zeros((2, 2), np.float32), np.zeros((2, 1), np.int64), DataError, "1-D"),
        ([[0.0, 0.0]], np.zeros(1, np.int64), DataError, "numpy arrays"),
    ],
)
def test_bad_data(x: Any, y: Any, error: type[Exception], match: str) -> None:
    model = build_model(MLP, seed=0)
    with pytest.raises(error, match=match):
        train_local(model, x, y, TrainingConfig(), seed=0)
    with pytest.raises(error, match=match):
        evaluate(model, x, y)


def test_bad_seed_and_divergence() -> None:
    x, y = separable(20)
    with pytest.raises(ConfigError, match="seed"):
        train_local(build_model(MLP, seed=0), x, y, TrainingConfig(), seed=-3)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        train_local(nn.Flatten(), x, y, TrainingConfig(), seed=0)
    huge = TrainingConfig(epochs=20, learning_rate=1e30)
    with pytest.raises(ConfigError, match="diverged"):
        train_local(build_model(MLP, seed=0), x * 1e6, y, huge, seed=0)


# --- evaluate ---------------------------------------------------------------------------


def test_evaluate_on_a_hand_made_case() -> None:
    model = nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(3, 2))  # logits = (x0, x1, 0)
    model.train()
    x = np.array([[5.0, 0.0], [0.0, 5.0], [0.0, 5.0], [-5.0, -5.0]], dtype=np.float32)
    y = np.array([0, 1, 0, 2])  # right, right, wrong, right
    metrics = evaluate(model, x, y, batch_size=3)
    assert metrics["accuracy"] == 0.75
    assert metrics["num_samples"] == 4.0
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 5.0, 0.0], [-5.0, -5.0, 0.0]])
    expected = float(nn.functional.cross_entropy(logits, torch.tensor([0, 1, 0, 2])))
    assert metrics["loss"] == pytest.approx(expected, rel=1e-6)
    assert model.training  # the mode is restored
    with pytest.raises(ConfigError, match="batch_size"):
        evaluate(model, x, y, batch_size=0)


def test_evaluate_uses_eval_mode() -> None:
    model = build_model(
        ModelSpec("mlp", {"in_features": 2, "hidden": [8], "out_features": 2, "dropout": 0.9}),
        seed=0,
    )
    x, y = separable(64)
    assert evaluate(model, x, y) == evaluate(model, x, y)  # no dropout noise
