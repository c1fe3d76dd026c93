"""When too few pods are left, the modeller's error says what each missing pod said."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom import FedAvg, ModelSpec, RequestPolicy, run_local
from fedloom.errors import PodResponseError
from fedloom.pod import ArraySource, PodPolicy, TableSource

MODEL = ModelSpec("mlp", {"in_features": 2, "hidden": [4], "out_features": 2})
MISSING = "no such data file"


def _pods() -> dict[str, ArraySource | TableSource]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 2)).astype(np.float32)
    return {
        "pod-a": ArraySource(x, (x[:, 0] > 0).astype(np.int64)),
        "pod-b": TableSource("/nonexistent/fedloom/b.csv", label_column="label"),
    }


def test_a_min_replies_shortfall_names_each_pods_error() -> None:
    with pytest.raises(PodResponseError, match="needs at least 2") as caught:
        run_local(
            FedAvg(model=MODEL, rounds=2),
            _pods(),
            request_policy=RequestPolicy(timeout=30, min_replies=2),
        )
    assert MISSING in caught.value.failed_pods["pod-b"]
    assert f"pod-b (NO_DATA: {MISSING}" in str(caught.value)


def test_too_few_pods_for_fedavg_names_each_pods_error() -> None:
    with pytest.raises(PodResponseError, match="needs at least 2 pod") as caught:
        run_local(FedAvg(model=MODEL, rounds=2, min_pods=2), _pods(), require_all=False)
    assert caught.value.failed_pods["pod-b"].startswith(f"NO_DATA: {MISSING}")


def test_a_task_that_cannot_start_names_each_rejection() -> None:
    policies = {"pod-b": PodPolicy(allowed_protocols=frozenset({"analytics"}))}
    pods = _pods() | {"pod-b": _pods()["pod-a"]}
    with pytest.raises(PodResponseError, match="could not start") as caught:
        run_local(FedAvg(model=MODEL, rounds=1), pods, policies=policies)
    assert caught.value.failed_pods == {
        "pod-b": "NO_ACCESS: protocol 'fedavg' is not allowed on this pod"
    }


def test_too_few_pods_names_the_pods_that_rejected_the_task() -> None:
    policies = {"pod-b": PodPolicy(allowed_protocols=frozenset({"analytics"}))}
    pods = _pods() | {"pod-b": _pods()["pod-a"]}
    with pytest.raises(PodResponseError, match="needs at least 2 pod") as caught:
        run_local(
            FedAvg(model=MODEL, rounds=1, min_pods=2), pods, policies=policies, require_all=False
        )
    assert caught.value.failed_pods == {
        "pod-b": "NO_ACCESS: protocol 'fedavg' is not allowed on this pod"
    }
