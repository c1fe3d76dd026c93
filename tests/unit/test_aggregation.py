"""Tests for fedloom.algorithms._aggregation (streaming FedAvg)."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedloom.algorithms._aggregation import WeightedMean, fedavg, validate_update
from fedloom.errors import AggregationError, UpdateRejectedError, UpdateRejectionReason

Array = npt.NDArray[Any]
Update = dict[str, Array]
R = UpdateRejectionReason


def make_reference() -> Update:
    return {
        "fc.weight": np.zeros((3, 4), dtype=np.float64),
        "fc.bias": np.zeros(3, dtype=np.float32),
        "bn.num_batches_tracked": np.zeros((), dtype=np.int64),
    }


def make_update(seed: int) -> Update:
    rng = np.random.default_rng(seed)
    return {
        "fc.weight": rng.normal(size=(3, 4)),
        "fc.bias": rng.normal(size=3).astype(np.float32),
        "bn.num_batches_tracked": np.array(rng.integers(0, 100), dtype=np.int64),
    }


GOOD: dict[str, tuple[Update, float]] = {
    "pod-a": (make_update(1), 10.0),
    "pod-b": (make_update(2), 3.0),
    "pod-c": (make_update(3), 7),
}


def numpy_mean(updates: dict[str, tuple[Update, float]], key: str) -> Array:
    stack = np.stack([u[key].astype(np.float64) for u, _ in updates.values()])
    weights = np.array([w for _, w in updates.values()], dtype=np.float64)
    return np.average(stack, axis=0, weights=weights)


def test_fedavg_matches_numpy_average() -> None:
    aggregate, rejected = fedavg(GOOD, make_reference())
    assert rejected == {}
    assert list(aggregate) == list(make_reference())
    np.testing.assert_allclose(
        aggregate["fc.weight"], numpy_mean(GOOD, "fc.weight"), rtol=1e-12, atol=0
    )
    assert aggregate["fc.weight"].dtype == np.float64
    assert aggregate["fc.bias"].dtype == np.float32
    np.testing.assert_allclose(aggregate["fc.bias"], numpy_mean(GOOD, "fc.bias"), rtol=1e-6)
    counts = aggregate["bn.num_batches_tracked"]
    assert counts.dtype == np.int64
    assert counts.shape == ()
    assert counts == np.rint(numpy_mean(GOOD, "bn.num_batches_tracked"))


def _nan(u: Update) -> None:
    u["fc.weight"][1, 2] = np.nan


def _inf(u: Update) -> None:
    u["fc.bias"][0] = -np.inf


def _shape(u: Update) -> None:
    u["fc.weight"] = np.zeros((4, 3))


def _dtype(u: Update) -> None:
    u["fc.bias"] = u["fc.bias"].astype(np.float64)


def _unknown(u: Update) -> None:
    u["extra"] = np.zeros(1)


def _missing(u: Update) -> None:
    del u["fc.bias"]


def _not_array(u: Update) -> None:
    u["fc.bias"] = [0.0, 0.0, 0.0]  # type: ignore[assignment]


def _keep(u: Update) -> None:
    pass


BAD_CASES: list[tuple[str, Callable[[Update], None], Any, R, str]] = [
    ("nan", _nan, 1.0, R.NON_FINITE, "fc.weight"),
    ("inf", _inf, 1.0, R.NON_FINITE, "fc.bias"),
    ("shape", _shape, 1.0, R.WRONG_SHAPE, "fc.weight"),
    ("dtype", _dtype, 1.0, R.WRONG_DTYPE, "fc.bias"),
    ("not-array", _not_array, 1.0, R.MALFORMED, "fc.bias"),
    ("unknown", _unknown, 1.0, R.UNKNOWN_KEYS, "extra"),
    ("missing", _missing, 1.0, R.MISSING_KEYS, "fc.bias"),
    ("weight-zero", _keep, 0.0, R.BAD_WEIGHT, "0.0"),
    ("weight-negative", _keep, -2.0, R.BAD_WEIGHT, "-2.0"),
    ("weight-nan", _keep, math.nan, R.BAD_WEIGHT, "nan"),
    ("weight-inf", _keep, math.inf, R.BAD_WEIGHT, "inf"),
    ("weight-bool", _keep, True, R.BAD_WEIGHT, "True"),
    ("weight-np-bool", _keep, np.True_, R.BAD_WEIGHT, "True"),
    ("weight-str", _keep, "3", R.BAD_WEIGHT, "str"),
    ("weight-huge-int", _keep, 10**400, R.BAD_WEIGHT, "weight"),
]


@pytest.mark.parametrize(
    ("name", "corrupt", "weight", "reason", "named"), BAD_CASES, ids=[c[0] for c in BAD_CASES]
)
def test_bad_update_is_rejected_and_left_out(
    name: str, corrupt: Callable[[Update], None], weight: Any, reason: R, named: str
) -> None:
    bad = make_update(99)
    corrupt(bad)
    with pytest.raises(UpdateRejectedError) as info:
        validate_update(bad, make_reference(), weight)
    assert info.value.reason is reason
    assert named in info.value.detail

    with_bad = dict(GOOD)
    with_bad["pod-bad"] = (bad, weight)
    aggregate, rejected = fedavg(with_bad, make_reference())
    expected, _ = fedavg(GOOD, make_reference())
    assert set(rejected) == {"pod-bad"}
    assert rejected["pod-bad"].reason is reason
    for key, value in expected.items():
        assert aggregate[key].dtype == value.dtype
        np.testing.assert_array_equal(aggregate[key], value)


def test_update_that_is_not_a_mapping_is_malformed() -> None:
    with pytest.raises(UpdateRejectedError) as info:
        validate_update([("fc.bias", np.zeros(3))], make_reference(), 1.0)  # type: ignore[arg-type]
    assert info.value.reason is R.MALFORMED


def test_valid_update_passes_validation() -> None:
    validate_update(make_update(5), make_reference(), 2)
    validate_update(make_update(5), make_reference(), np.float32(0.5))  # type: ignore[arg-type]


def test_state_untouched_after_rejection() -> None:
    mean = WeightedMean(make_reference())
    mean.add("pod-a", make_update(1), 2.0)
    before = (mean.result(), mean.total_weight, list(mean.contributors))
    bad = make_update(2)
    bad["fc.weight"][-1, -1] = np.nan  # the last key checked: earlier keys are fine
    with pytest.raises(UpdateRejectedError):
        mean.add("pod-b", bad, 5.0)
    assert mean.total_weight == before[1]
    assert mean.contributors == before[2]
    for key, value in before[0].items():
        np.testing.assert_array_equal(mean.result()[key], value)
    assert mean.rejected["pod-b"].reason is R.NON_FINITE
    assert mean.statistics() == {"accepted": 1, "rejected": 1, "total_weight": 2.0}


def test_overflowing_sum_is_rejected_without_changing_state() -> None:
    reference = {"w": np.zeros(2)}
    mean = WeightedMean(reference)
    mean.add("pod-a", {"w": np.array([1.0, 2.0])}, 1.0)
    with pytest.raises(UpdateRejectedError) as info:
        mean.add("pod-b", {"w": np.array([1.0, 1e308])}, 1e10)
    assert info.value.reason is R.NON_FINITE
    with pytest.raises(UpdateRejectedError) as info:
        mean.add("pod-c", {"w": np.array([2.0, 2.0])}, 1e308)
    assert info.value.reason is R.NON_FINITE
    mean.add("pod-d", {"w": np.array([3.0, 4.0])}, 1.0)
    np.testing.assert_array_equal(mean.result()["w"], [2.0, 3.0])
    assert mean.total_weight == 2.0


def test_overflowing_total_weight_is_rejected() -> None:
    mean = WeightedMean({"w": np.zeros(2)})
    mean.add("pod-a", {"w": np.zeros(2)}, 1e308)
    with pytest.raises(UpdateRejectedError) as info:
        mean.add("pod-b", {"w": np.zeros(2)}, 1e308)
    assert info.value.reason is R.BAD_WEIGHT
    assert mean.total_weight == 1e308


def test_update_arrays_are_not_modified_or_aliased() -> None:
    update = make_update(1)
    update["fc.weight"].setflags(write=False)  # read-only, like a wire-decoded view
    copy = {k: v.copy() for k, v in update.items()}
    mean = WeightedMean(make_reference())
    mean.add("pod-a", update, 1.0)
    result = mean.result()
    result["fc.weight"][0, 0] = 1234.0
    for key, value in copy.items():
        np.testing.assert_array_equal(update[key], value)
    assert mean.result()["fc.weight"][0, 0] != 1234.0


def test_order_of_adds_does_not_matter() -> None:
    results = []
    for order in itertools.permutations(GOOD):
        mean = WeightedMean(make_reference())
        for name in order:
            update, weight = GOOD[name]
            mean.add(name, update, weight)
        results.append(mean.result())
    for result in results[1:]:
        for key, value in results[0].items():
            np.testing.assert_allclose(result[key], value, rtol=1e-12)


def test_duplicate_contributor_is_an_error() -> None:
    mean = WeightedMean(make_reference())
    mean.add("pod-a", make_update(1), 1.0)
    with pytest.raises(AggregationError, match="pod-a"):
        mean.add("pod-a", make_update(2), 1.0)
    with pytest.raises(UpdateRejectedError):
        mean.add("pod-b", make_update(2), -1.0)
    with pytest.raises(AggregationError, match="pod-b"):
        mean.add("pod-b", make_update(2), 1.0)
    assert mean.contributors == ["pod-a"]


def test_all_rejected_is_an_aggregation_error() -> None:
    updates = {"pod-a": (make_update(1), 0.0), "pod-b": (make_update(2), -1.0)}
    with pytest.raises(AggregationError, match="every update was rejected"):
        fedavg(updates, make_reference())
    with pytest.raises(AggregationError, match="no update"):
        WeightedMean(make_reference()).result()


def test_bad_reference_is_an_aggregation_error() -> None:
    with pytest.raises(AggregationError, match="no arrays"):
        WeightedMean({})
    with pytest.raises(AggregationError, match="'names'"):
        WeightedMean({"names": np.array(["a", "b"])})
    with pytest.raises(AggregationError, match="'w'"):
        WeightedMean({"w": [1.0]})  # type: ignore[dict-item]


def test_integer_and_bool_arrays_round_back() -> None:
    reference = {"n": np.zeros(3, dtype=np.int32), "flag": np.zeros(2, dtype=bool)}
    aggregate, _ = fedavg(
        {
            "a": ({"n": np.array([1, 2, 10], dtype=np.int32), "flag": np.array([True, False])}, 3),
            "b": ({"n": np.array([2, 3, -10], dtype=np.int32), "flag": np.array([False, True])}, 1),
        },
        reference,
    )
    np.testing.assert_array_equal(aggregate["n"], [1, 2, 5])  # 1.25, 2.25, 5.0
    assert aggregate["n"].dtype == np.int32
    np.testing.assert_array_equal(aggregate["flag"], [True, False])


@pytest.mark.parametrize("dtype", [np.int64, np.uint64, np.int8, np.uint8])
def test_extreme_integers_stay_in_range(dtype: Any) -> None:
    info = np.iinfo(dtype)
    reference = {"n": np.zeros(2, dtype=dtype)}
    top = {"n": np.array([info.max, info.min], dtype=dtype)}
    aggregate, _ = fedavg({"a": (top, 1.0), "b": (top, 2.0)}, reference)
    assert aggregate["n"].dtype == dtype
    assert aggregate["n"][1] == info.min
    assert info.max - aggregate["n"][0] <= (2048 if info.bits == 64 else 0)


def test_statistics() -> None:
    mean = WeightedMean(make_reference())
    mean.add("pod-a", make_update(1), 2.5)
    mean.add("pod-b", make_update(2), 1)
    assert mean.statistics() == {"accepted": 2, "rejected": 0, "total_weight": 3.5}


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
    count=st.integers(min_value=1, max_value=6),
)
def test_weighted_mean_property(data: st.DataObject, shape: tuple[int, ...], count: int) -> None:
    elements = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)
    arrays = [data.draw(hnp.arrays(np.float64, shape, elements=elements)) for _ in range(count)]
    weights = [data.draw(st.floats(1e-3, 1e3)) for _ in range(count)]
    mean = WeightedMean({"w": np.zeros(shape)})
    for i, (array, weight) in enumerate(zip(arrays, weights, strict=True)):
        mean.add(f"pod-{i}", {"w": array}, weight)
    result = mean.result()["w"]
    expected = np.average(np.stack(arrays), axis=0, weights=np.array(weights))
    np.testing.assert_allclose(result, expected, rtol=1e-9, atol=1e-9)
    slack = 1e-9 * (1.0 + np.abs(np.stack(arrays)).max(axis=0))
    assert np.all(result >= np.min(arrays, axis=0) - slack)
    assert np.all(result <= np.max(arrays, axis=0) + slack)
    assert mean.total_weight == pytest.approx(sum(weights), rel=1e-12)
