"""The strategy contract, its registry and the three strategies, without processes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedloom.algorithms._aggregation import WeightedMean
from fedloom.algorithms.ml import ModelSpec, TrainingConfig, build_model, local_round
from fedloom.errors import AbortReason, ConfigError, UpdateRejectionReason
from fedloom.protocols import FedAvg
from fedloom.simulation._backend import ClientFailure, FailureKind
from fedloom.simulation._fold import OrderedFold
from fedloom.strategies import (
    STATE_PREFIX,
    FedAdamStrategy,
    StrategySpec,
    get_strategy,
    registered_strategies,
    split_state,
    with_state,
)

MLP = ModelSpec("mlp", {"in_features": 4, "hidden": [3], "out_features": 2})


def test_registry_knows_the_three_strategies() -> None:
    assert registered_strategies() == ["fedadam", "fedavg", "fedprox"]
    assert get_strategy("fedprox", {"mu": 0.1}).to_args() == {"mu": 0.1}


@pytest.mark.parametrize(
    ("name", "args", "match"),
    [
        ("fedsgd", {}, "unknown strategy 'fedsgd'; known: fedadam, fedavg, fedprox"),
        ("fedprox", {"lr": 1}, r"has no args \['lr'\]; it takes \['mu'\]"),
        ("fedprox", {"mu": -0.1}, r"mu must be a number in \[0.0, inf\)"),
        ("fedprox", {"mu": True}, "mu must be a number"),
        ("fedadam", {"beta_1": 1.0}, r"beta_1 must be a number in \[0.0, 1.0\)"),
        ("fedadam", {"tau": 0}, r"tau must be a number in \(0.0"),
        ("fedavg", {"mu": 1}, "takes none"),
    ],
)
def test_bad_names_and_args_are_one_line_config_errors(name: str, args: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        get_strategy(name, args)
    assert "\n" not in str(info.value)


def test_spec_round_trips_and_rejects_other_shapes() -> None:
    spec = StrategySpec.from_config({"name": "fedadam", "args": {"eta": 0.1}})
    assert StrategySpec.from_config(spec.to_config()) == spec
    assert StrategySpec.from_config("fedavg").is_default
    for bad in ({"args": {}}, {"name": "fedavg", "extra": 1}, 3):
        with pytest.raises(ConfigError, match="strategy must be a name"):
            StrategySpec.from_config(bad)


def test_fedavg_task_config_is_unchanged_by_the_default_strategy() -> None:
    plain = FedAvg(model=MLP)
    assert "strategy" not in plain.to_config()  # existing task files stay as they are
    prox = FedAvg(model=MLP, strategy=StrategySpec("fedprox", {"mu": 0.2}))
    assert FedAvg.from_config(prox.to_config()) == prox
    with pytest.raises(ConfigError, match="unknown strategy"):
        FedAvg.from_config(plain.to_config() | {"strategy": "nope"})


def _train(loss_term: object) -> dict[str, torch.Tensor]:
    model = build_model(MLP, seed=1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((16, 4)).astype(np.float32)
    y = rng.integers(0, 2, 16)
    config = TrainingConfig(epochs=2, batch_size=4, learning_rate=0.5)
    local_round(model, x, y, config, seed=3, loss_term=loss_term)  # type: ignore[arg-type]
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_fedprox_mu_zero_is_fedavg_and_mu_pulls_towards_the_global_model() -> None:
    start = {k: v.detach().clone() for k, v in build_model(MLP, seed=1).state_dict().items()}
    plain = _train(None)
    zero = _train(get_strategy("fedprox", {"mu": 0.0}).client_hook(start, {}).loss_term)
    strong = _train(get_strategy("fedprox", {"mu": 1.0}).client_hook(start, {}).loss_term)
    assert all(torch.equal(plain[k], zero[k]) for k in plain)

    def drift(state: dict[str, torch.Tensor]) -> float:
        return sum(float(torch.sum((state[k] - start[k]) ** 2)) for k in start)

    assert drift(strong) < drift(plain)


def test_the_proximal_term_is_mu_over_two_times_the_squared_distance() -> None:
    model = build_model(MLP, seed=1)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.5)
    count = sum(p.numel() for p in model.parameters())
    term = get_strategy("fedprox", {"mu": 0.4}).client_hook(start, {}).loss_term(model)
    assert term is not None
    assert float(term.detach()) == pytest.approx(0.4 / 2 * count * 0.25, rel=1e-6)


def test_fedadam_server_step_by_hand() -> None:
    adam = FedAdamStrategy(eta=0.1, beta_1=0.5, beta_2=0.75, tau=0.01)
    x0 = {"w": np.array([1.0, 2.0], np.float32), "n": np.array([3], np.int64)}
    state = adam.initial_state(x0)
    assert sorted(state) == ["m/w", "steps", "v/w"]
    mean = {"w": np.array([1.5, 1.0], np.float32), "n": np.array([4], np.int64)}
    x1, state = adam.server_step(x0, mean, state)
    # delta = [0.5, -1]; m = 0.5 * delta; v = 0.25 * delta^2; step = eta m / (sqrt v + tau)
    m, v = np.array([0.25, -0.5]), np.array([0.0625, 0.25])
    expected = np.array([1.0, 2.0]) + 0.1 * m / (np.sqrt(v) + 0.01)
    np.testing.assert_array_equal(x1["w"], expected.astype(np.float32))
    assert x1["n"].tolist() == [4]  # integers take the mean
    np.testing.assert_array_equal(state["m/w"], m)
    np.testing.assert_array_equal(state["v/w"], v)
    assert int(state["steps"]) == 1
    x2, state = adam.server_step(x1, x1, state)  # no change: momentum still moves it
    assert int(state["steps"]) == 2
    assert not np.array_equal(x2["w"], x1["w"])


def test_state_round_trips_through_checkpoint_names() -> None:
    adam = FedAdamStrategy()
    model = {"w": np.zeros(2, np.float32)}
    state = adam.initial_state(model)
    saved = with_state(model, state)
    assert f"{STATE_PREFIX}m/w" in saved
    back_model, back_state = split_state(saved)
    assert sorted(back_model) == ["w"] and sorted(back_state) == sorted(state)


def test_pods_and_simulation_folds_are_the_same_bits() -> None:
    rng = np.random.default_rng(4)
    updates = [rng.standard_normal(1000).astype(np.float32) * 7 for _ in range(4)]
    weights = [3.0, 17.0, 5.0, 11.0]
    pods = WeightedMean({"g": np.zeros(1000, np.float32)})
    fold = OrderedFold({"g": torch.zeros(1000)}, range(4))
    for index, (update, weight) in enumerate(zip(updates, weights, strict=True)):
        pods.add(str(index), {"g": update}, weight)
        fold.offer(index, {"g": torch.from_numpy(update)}, weight)
    target = {"g": torch.zeros(1000)}
    fold.result_into(target)
    assert pods.result()["g"].tobytes() == target["g"].numpy().tobytes()


def test_the_simulation_fold_rejects_an_overflowing_update_and_goes_on() -> None:
    fold = OrderedFold({"g": torch.zeros(2, dtype=torch.float64)}, [0, 1, 2])
    fold.offer(0, {"g": torch.tensor([1.0, 2.0], dtype=torch.float64)}, 1.0)
    assert fold.offer(1, {"g": torch.tensor([1.0, 1e308], dtype=torch.float64)}, 1e10) == [1]
    fold.offer(2, {"g": torch.tensor([3.0, 4.0], dtype=torch.float64)}, 1.0)
    assert fold.folded == [0, 2]
    assert fold.rejected[1].reason is UpdateRejectionReason.NON_FINITE
    failure = ClientFailure.rejected(fold.rejected[1])
    assert failure.kind is AbortReason.UPDATE_REJECTED
    assert failure.rejection is UpdateRejectionReason.NON_FINITE
    assert ClientFailure.from_body(failure.to_body()["failure"]) == failure


def test_simulation_failures_are_abort_reasons() -> None:
    assert {
        FailureKind.OUT_OF_MEMORY,
        FailureKind.ERROR,
        FailureKind.NON_FINITE,
        FailureKind.WORKER_LOST,
        FailureKind.STOPPED,
    } <= set(AbortReason)
    assert ClientFailure.of(MemoryError()).kind is AbortReason.WORKER_OUT_OF_MEMORY
