"""FedAvg end to end: real hub, pods, modeller and stores in one asyncio process."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedloom import (
    FedAvg,
    FedAvgResult,
    LocalFederation,
    ModelSpec,
    SqliteExperimentStore,
    TrainingConfig,
    run_local,
)
from fedloom.algorithms.ml import load_arrays, state_to_arrays, train_local
from fedloom.algorithms.ml import round_seed as _stable_seed
from fedloom.errors import AbortReason, AggregationError, ConfigError, UpdateRejectionReason
from fedloom.plugins import Message, MessageType, build_model, load_protocol
from fedloom.pod import ArraySource, MemoryPodStore, SqlitePodStore, TableSource

from .conftest import (
    RAW,
    TINY_MLP,
    FakePod,
    RawClient,
    labelled_arrays,
    until_idle,
)

SIZES = {"pod-a": 40, "pod-b": 64, "pod-c": 90}
TRAINING = TrainingConfig(epochs=2, batch_size=16, learning_rate=0.1)


def honest_data() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {pod: labelled_arrays(rows, seed=i) for i, (pod, rows) in enumerate(SIZES.items())}


def honest_pods() -> dict[str, ArraySource]:
    return {pod: ArraySource(x, y) for pod, (x, y) in honest_data().items()}


def fedavg(**changes: Any) -> FedAvg:
    options: dict[str, Any] = {
        "model": TINY_MLP,
        "rounds": 1,
        "training": TRAINING,
        "seed": 7,
        "validation_fraction": 0.25,
    }
    return FedAvg(**(options | changes))


# --- the aggregate equals a centrally computed FedAvg -----------------------------------


def reference_fedavg(
    protocol: FedAvg, data: dict[str, tuple[np.ndarray, np.ndarray]]
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """One FedAvg round computed in this process, replaying each worker's split and seeds."""
    initial = state_to_arrays(build_model(protocol.model, seed=protocol.seed))
    updates: list[dict[str, np.ndarray]] = []
    weights: dict[str, int] = {}
    for pod in sorted(data):
        x, y = data[pod]
        order = np.random.default_rng(_stable_seed(protocol.seed, pod)).permutation(len(x))
        n_val = int(len(x) * protocol.validation_fraction)
        train = order[n_val:]
        model = build_model(protocol.model)
        load_arrays(model, initial)
        train_local(
            model,
            x[train],
            y[train],
            protocol.training,
            seed=_stable_seed(protocol.seed, pod, 0),
        )
        updates.append(state_to_arrays(model))
        weights[pod] = len(train)
    averaged = {
        key: np.average(
            np.stack([u[key] for u in updates]).astype(np.float64),
            axis=0,
            weights=[weights[p] for p in sorted(data)],
        ).astype(initial[key].dtype)
        for key in initial
    }
    return averaged, weights


def test_one_round_equals_a_central_fedavg() -> None:
    protocol = fedavg(rounds=1)
    data = honest_data()
    run = run_local(protocol, {pod: ArraySource(x, y) for pod, (x, y) in data.items()})
    result = run.result
    assert isinstance(result, FedAvgResult)
    assert run.accepted == sorted(SIZES) and not run.rejected and not run.aborted
    expected, weights = reference_fedavg(protocol, data)

    assert set(result.parameters) == set(expected)
    for key, array in expected.items():
        got = result.parameters[key]
        assert got.dtype == array.dtype and got.shape == array.shape, key
        assert np.allclose(got, array, rtol=1e-6, atol=1e-7), (key, np.abs(got - array).max())
    # the reference really moved away from the initial model: the check is not vacuous
    initial = state_to_arrays(build_model(protocol.model, seed=protocol.seed))
    assert any(not np.allclose(expected[k], initial[k]) for k in initial)

    (round_0,) = result.history
    assert round_0.pods == sorted(SIZES) and not round_0.rejected
    for pod, rows in SIZES.items():
        assert round_0.per_pod[pod]["num_samples"] == weights[pod]
        assert round_0.per_pod[pod]["validation_num_samples"] == rows - weights[pod]
    assert round_0.aggregated["num_samples"] == sum(weights.values())
    # the model() view carries the same parameters
    module_state = state_to_arrays(result.model())
    assert all(np.array_equal(module_state[k], result.parameters[k]) for k in expected)


# --- a poisoned or malformed update is left out, and changes nothing --------------------


def _honest_update(message: Message) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """What a plausible pod would send: shifted global parameters and real-looking metrics."""
    tensors = {name: np.array(array) + np.float32(0.5) for name, array in message.tensors.items()}
    body = {
        "round": message.body["round"],
        "num_samples": 50,
        "train": {"loss": 0.5, "accuracy": 0.5, "num_samples": 50.0},
        "validation": {},
    }
    return body, tensors


def _set(name: str, index: tuple[int, ...], value: float) -> Callable[..., None]:
    def tamper(body: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
        tensors[name][index] = value

    return tamper


def _replace(name: str, make: Callable[[np.ndarray], np.ndarray]) -> Callable[..., None]:
    def tamper(body: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
        tensors[name] = make(tensors[name])

    return tamper


def _weight(value: object) -> Callable[..., None]:
    def tamper(body: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
        body["num_samples"] = value

    return tamper


def _add_key(body: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
    tensors["9.weight"] = np.zeros((2, 2), dtype=np.float32)


def _drop_key(body: dict[str, Any], tensors: dict[str, np.ndarray]) -> None:
    del tensors["3.bias"]


BAD_UPDATES = {
    "nan": (_set("1.weight", (0, 0), math.nan), UpdateRejectionReason.NON_FINITE),
    "inf": (_set("3.bias", (1,), math.inf), UpdateRejectionReason.NON_FINITE),
    "minus-inf": (_set("3.weight", (0, 2), -math.inf), UpdateRejectionReason.NON_FINITE),
    "wrong-shape": (
        _replace("1.weight", lambda a: np.zeros((a.shape[0], a.shape[1] + 1), a.dtype)),
        UpdateRejectionReason.WRONG_SHAPE,
    ),
    "transposed": (_replace("3.weight", lambda a: a.T.copy()), UpdateRejectionReason.WRONG_SHAPE),
    "wrong-dtype": (
        _replace("1.bias", lambda a: a.astype(np.float64)),
        UpdateRejectionReason.WRONG_DTYPE,
    ),
    "int-dtype": (
        _replace("3.bias", lambda a: a.astype(np.int32)),
        UpdateRejectionReason.WRONG_DTYPE,
    ),
    "unknown-key": (_add_key, UpdateRejectionReason.UNKNOWN_KEYS),
    "missing-key": (_drop_key, UpdateRejectionReason.MISSING_KEYS),
    "zero-samples": (_weight(0), UpdateRejectionReason.BAD_WEIGHT),
    "negative-samples": (_weight(-5), UpdateRejectionReason.BAD_WEIGHT),
    "nan-samples": (_weight(math.nan), UpdateRejectionReason.BAD_WEIGHT),
    "bool-samples": (_weight(True), UpdateRejectionReason.BAD_WEIGHT),
}


@pytest.fixture(scope="module")
def clean_run() -> FedAvgResult:
    """The two-round federation of the honest pods alone."""
    result = run_local(fedavg(rounds=2), honest_pods()).result
    assert isinstance(result, FedAvgResult)
    return result


@pytest.mark.parametrize("case", sorted(BAD_UPDATES))
async def test_a_bad_update_is_rejected_and_changes_nothing(
    case: str, clean_run: FedAvgResult
) -> None:
    tamper, reason = BAD_UPDATES[case]

    async def answer(message: Message) -> tuple[MessageType, Any, dict[str, np.ndarray]] | None:
        if message.type is not MessageType.MODEL_PARAMETERS:
            return None
        body, tensors = _honest_update(message)
        tamper(body, tensors)
        return MessageType.TRAINING_UPDATE, body, tensors

    async with LocalFederation(honest_pods()) as federation:
        evil = FakePod(federation.hub.connect("pod-evil", "pod", accepts=["modeller"]), answer)
        evil_task = asyncio.create_task(evil.run())
        run = await federation.modeller.run(fedavg(rounds=2), [*sorted(SIZES), "pod-evil"])
        evil_saw = await evil_task

    assert evil_saw.count(MessageType.MODEL_PARAMETERS) == 2
    assert evil_saw[-1] is MessageType.TASK_COMPLETE
    assert "pod-evil" in run.accepted and not run.aborted
    result = run.result
    for summary in result.history:
        assert summary.rejected == {"pod-evil": reason.value}
        assert summary.pods == sorted(SIZES)
        assert "pod-evil" not in summary.per_pod
    assert set(result.parameters) == set(clean_run.parameters)
    for key, array in clean_run.parameters.items():
        assert result.parameters[key].dtype == array.dtype
        assert np.array_equal(result.parameters[key], array), key


# --- client sampling --------------------------------------------------------------------


def test_fraction_samples_the_same_pods_for_the_same_seed() -> None:
    pods = {f"pod-{i}": ArraySource(*labelled_arrays(24, seed=10 + i)) for i in range(4)}
    protocol = fedavg(rounds=5, fraction=0.5, seed=3, training=TrainingConfig(batch_size=8))

    def sampled() -> list[list[str]]:
        result = run_local(protocol, pods).result
        assert len(result.history) == 5
        return [summary.pods for summary in result.history]

    first, second = sampled(), sampled()
    assert first == second
    assert all(len(chosen) == 2 and len(set(chosen)) == 2 for chosen in first)
    assert all(set(chosen) <= set(pods) for chosen in first)
    # a sampler that always took the same two pods would not be sampling
    assert len({tuple(chosen) for chosen in first}) > 1


# --- experiment and pod stores ----------------------------------------------------------


def test_stores_record_the_run_and_survive_a_reopen(tmp_path: Path) -> None:
    experiments = SqliteExperimentStore(tmp_path / "m.sqlite")
    pod_stores = {pod: SqlitePodStore(tmp_path / f"{pod}.sqlite") for pod in SIZES}
    try:
        run = run_local(
            fedavg(rounds=2),
            honest_pods(),
            modeller_store=experiments,
            pod_stores=pod_stores,
            name="stored-run",
            keep_checkpoints="all",
        )
    finally:
        experiments.close()
        for store in pod_stores.values():
            store.close()
    result = run.result
    assert run.experiment_id is not None

    for attempt in ("first", "reopened"):
        with SqliteExperimentStore(tmp_path / "m.sqlite") as store:
            record = store.get_experiment(run.experiment_id)
            assert record.name == "stored-run", attempt
            assert record.status == "completed", attempt
            assert record.task == fedavg(rounds=2).dump()
            assert [r.round_index for r in record.rounds] == [0, 1]
            assert [c.round_index for c in record.checkpoints] == [0, 1]
            for stored, summary in zip(record.rounds, result.history, strict=True):
                assert stored.aggregated == pytest.approx(summary.aggregated, rel=1e-12)
                assert set(stored.per_pod) == set(summary.pods)
            latest = store.load_checkpoint(run.experiment_id)
            assert set(latest) == set(result.parameters)
            assert all(np.array_equal(latest[k], result.parameters[k]) for k in latest)
            assert all(latest[k].dtype == result.parameters[k].dtype for k in latest)
            assert record.result is not None and record.result["rounds"] == 2
        for pod in SIZES:
            with SqlitePodStore(tmp_path / f"{pod}.sqlite") as pod_store:
                task_run = pod_store.get_task_run(run.task_id)
                assert task_run.status == "completed", (pod, attempt)
                assert task_run.protocol == "fedavg" and task_run.modeller == "modeller"
                assert task_run.finished_at is not None and task_run.reason is None
                assert task_run.result is not None and task_run.result["rounds"] == [0, 1]


# --- a pod that fails mid-task ----------------------------------------------------------


def _features_csv(tmp_path: Path) -> Path:
    """A CSV with four numeric feature columns and no label column."""
    x, _ = labelled_arrays(40, seed=99)
    path = tmp_path / "features.csv"
    pd.DataFrame(x, columns=[f"f{i}" for i in range(4)]).to_csv(path, index=False)
    return path


BROKEN_SOURCES = {
    # label_column names a column that is not there: the data cannot even be counted
    "missing-label-column": (
        lambda path: TableSource(path, label_column="label"),
        AbortReason.INCOMPATIBLE_DATASOURCE,
        "'label'",
    ),
    # an unlabelled table: arrays() gives y = None, which fedavg cannot train on
    "unlabelled-table": (TableSource, AbortReason.INCOMPATIBLE_DATASOURCE, "labelled"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_SOURCES))
async def test_a_failing_pod_aborts_cleanly_and_keeps_serving(case: str, tmp_path: Path) -> None:
    make_source, reason, hint = BROKEN_SOURCES[case]
    good_x, good_y = labelled_arrays(48, seed=5)
    pods: dict[str, Any] = honest_pods()
    pods.pop("pod-c")
    pods["pod-bad"] = {
        "default": make_source(_features_csv(tmp_path)),
        "good": ArraySource(good_x, good_y),
    }
    bad_store = SqlitePodStore(tmp_path / "pod-bad.sqlite")

    try:
        async with LocalFederation(pods, pod_stores={"pod-bad": bad_store}) as federation:
            # 1. with other pods: the round goes on without it; the abort is reported
            mixed = await federation.run(fedavg(rounds=2))
            assert set(mixed.aborted) == {"pod-bad"}
            report = mixed.aborted["pod-bad"]
            assert report.reason is reason
            assert hint in report.message
            assert all(r.pods == ["pod-a", "pod-b"] for r in mixed.result.history)
            run_record = bad_store.get_task_run(mixed.task_id)
            assert (run_record.status, run_record.reason) == ("aborted", reason.value)

            # 2. alone: no usable update at all is an AggregationError that says why
            with pytest.raises(AggregationError, match="pod-bad") as caught:
                await federation.modeller.run(fedavg(), ["pod-bad"])
            assert hint in str(caught.value)  # what the pod said, not only its name

            # 3. the same pod, same federation, a valid dataset: it still works
            good = await federation.modeller.run(fedavg(rounds=2), ["pod-bad"], dataset="good")
            assert not good.aborted
            assert [r.pods for r in good.result.history] == [["pod-bad"], ["pod-bad"]]
            await until_idle(federation.pods["pod-bad"])
            assert bad_store.get_task_run(good.task_id).status == "completed"
            assert federation.pods["pod-bad"].running_tasks() == []
        statuses = [(r.status, r.reason) for r in bad_store.task_runs()]
    finally:
        bad_store.close()
    assert statuses == [
        ("aborted", reason.value),
        ("aborted", reason.value),
        ("completed", None),
    ]


def test_task_result_still_lists_a_pod_that_accepted_and_then_aborted(tmp_path: Path) -> None:
    """``TaskResult.accepted`` is who answered JOB_ACCEPT, whatever happened afterwards."""
    pods: dict[str, Any] = honest_pods()
    pods["pod-bad"] = TableSource(_features_csv(tmp_path), label_column="label")
    run = run_local(fedavg(), pods)
    assert set(run.aborted) == {"pod-bad"}
    assert set(run.accept_seconds) == {*SIZES, "pod-bad"}  # its JOB_ACCEPT did arrive
    assert run.accepted == sorted([*SIZES, "pod-bad"])
    assert not set(run.accepted) & set(run.rejected)


# --- a training config with a negative learning rate ------------------------------------


def test_a_negative_learning_rate_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"learning_rate must be > 0, got -0\.1"):
        TrainingConfig(learning_rate=-0.1)
    spec = {
        "protocol": "fedavg",
        "config": {"model": TINY_MLP.to_config(), "training": {"learning_rate": -0.1}},
    }
    with pytest.raises(ConfigError, match="learning_rate"):
        load_protocol(spec)


async def test_a_pod_rejects_a_job_with_a_negative_learning_rate() -> None:
    store = MemoryPodStore()
    spec = fedavg().dump()
    spec["config"]["training"]["learning_rate"] = -0.1

    async with LocalFederation(
        {"pod-a": honest_pods()["pod-a"]}, pod_stores={"pod-a": store}, guests=[RAW]
    ) as fed:
        client = RawClient(fed.hub)
        rejected = await client.request("pod-a", {"task": spec, "dataset": "default"})
        # the same request with a valid rate is accepted: the rejection was about the rate
        spec["config"]["training"]["learning_rate"] = 0.1
        accepted = await client.request("pod-a", {"task": spec, "dataset": "default"})

    assert rejected.type is MessageType.JOB_REJECT
    assert rejected.body["reason"] == AbortReason.INVALID_TASK.value
    assert "learning_rate" in rejected.body["message"]
    assert rejected.body["exception_type"] == "ConfigError"
    assert accepted.type is MessageType.JOB_ACCEPT
    assert store.get_task_run(rejected.task_id).status == "rejected"
    assert store.get_task_run(rejected.task_id).reason == AbortReason.INVALID_TASK.value


def test_in_process_pods_with_dropout_are_reproducible() -> None:
    """Pods training in threads of one process take turns with torch's one generator."""
    spec = ModelSpec(
        "mlp", {"in_features": 4, "hidden": [32, 32], "out_features": 2, "dropout": 0.3}
    )
    protocol = fedavg(model=spec, rounds=2)
    results = [run_local(protocol, honest_pods()).result.parameters for _ in range(3)]
    for other in results[1:]:
        for key, value in results[0].items():
            assert np.array_equal(value, other[key]), key
