"""Tests for QuantileSketch: the stated relative-error bound, exact merging, validation."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.algorithms._quantiles import ZERO_THRESHOLD, QuantileSketch
from fedloom.errors import ConfigError, DataError, ProtocolError

QS = [0.0, 0.001, 0.01, 0.1, 0.25, 0.333, 0.5, 0.75, 0.9, 0.99, 0.999, 1.0]


def assert_within_bound(sketch: QuantileSketch, data: np.ndarray, qs: list[float]) -> None:
    """The docstring's guarantee: |v - x_r| <= alpha |x_r| for r = floor(q (n - 1))."""
    xs = np.sort(data[~np.isnan(data)])
    alpha = sketch.relative_accuracy
    for q in qs:
        x = float(xs[math.floor(q * (len(xs) - 1))])
        v = sketch.quantile(q)
        if abs(x) < ZERO_THRESHOLD:
            assert v == 0.0
        else:
            assert abs(v - x) <= alpha * abs(x) * (1 + 1e-9), (q, x, v)


def split_into_pods(data: np.ndarray, pods: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Uneven contiguous pieces (some may be empty)."""
    cuts = np.sort(rng.integers(0, len(data) + 1, size=pods - 1))
    return np.split(data, cuts)


def sketch_of_pods(pieces: list[np.ndarray], accuracy: float) -> QuantileSketch:
    merged = QuantileSketch(accuracy)
    for piece in pieces:
        local = QuantileSketch(accuracy)
        local.add(piece)
        merged = merged.merge(local)
    return merged


DISTRIBUTIONS: dict[str, Callable[[np.random.Generator, int], np.ndarray]] = {
    "normal": lambda rng, n: rng.normal(5.0, 2.0, n),
    "negative_lognormal": lambda rng, n: -rng.lognormal(0.0, 3.0, n),
    "cauchy": lambda rng, n: rng.standard_cauchy(n) * 1e3,
    "pareto": lambda rng, n: rng.pareto(0.8, n),
    "mixed_with_zeros": lambda rng, n: np.where(rng.random(n) < 0.2, 0.0, rng.normal(0.0, 1e-3, n)),
    "integers": lambda rng, n: rng.integers(-50, 50, n).astype(float),
    "huge_and_tiny": lambda rng, n: rng.choice([-1, 1], n) * 10.0 ** rng.uniform(-15, 300, n),
}


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("accuracy", [0.01, 0.05])
def test_bound_on_fixed_distributions_merged_over_pods(
    name: str, seed: int, accuracy: float
) -> None:
    rng = np.random.default_rng(seed)
    data = DISTRIBUTIONS[name](rng, 5_000)
    for pods in range(1, 6):
        sketch = sketch_of_pods(split_into_pods(data, pods, rng), accuracy)
        assert sketch.count == len(data)
        assert_within_bound(sketch, data, QS)


finite = st.floats(allow_nan=False, allow_infinity=False)  # the whole float range


@settings(max_examples=200, deadline=None)
@given(
    data=st.lists(finite, min_size=1, max_size=300),
    cuts=st.lists(st.integers(min_value=0, max_value=300), max_size=4),
    accuracy=st.sampled_from([0.001, 0.01, 0.02, 0.1, 0.3]),
    qs=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=5),
)
def test_bound_holds_for_any_data_split_over_pods(
    data: list[float], cuts: list[int], accuracy: float, qs: list[float]
) -> None:
    values = np.array(data)
    pieces = np.split(values, sorted(min(c, len(values)) for c in cuts))
    sketch = sketch_of_pods(pieces, accuracy)
    assert_within_bound(sketch, values, qs)


@settings(max_examples=100, deadline=None)
@given(st.lists(finite, max_size=100), st.lists(finite, max_size=100))
def test_merge_is_exact(left: list[float], right: list[float]) -> None:
    a, b, both = QuantileSketch(), QuantileSketch(), QuantileSketch()
    a.add(np.array(left))
    b.add(np.array(right))
    both.add(np.array(left + right))
    for merged in (a.merge(b), b.merge(a)):
        for name, array in both.to_arrays().items():
            np.testing.assert_array_equal(merged.to_arrays()[name], array)


def test_merge_leaves_inputs_unchanged() -> None:
    a, b = QuantileSketch(), QuantileSketch()
    a.add(np.array([1.0, 2.0]))
    b.add(np.array([-3.0]))
    merged = a.merge(b)
    assert (a.count, b.count, merged.count) == (2, 1, 3)


def test_nan_is_ignored_and_zero_bucket_used() -> None:
    sketch = QuantileSketch()
    sketch.add(np.array([np.nan, 0.0, 1e-13, -1e-13, np.nan, 2.0]))
    assert sketch.count == 4
    assert sketch.quantile(0.0) == 0.0
    assert sketch.quantile(2 / 3) == 0.0
    assert sketch.quantile(1.0) == pytest.approx(2.0, rel=0.01)
    assert sketch.to_arrays()["zero_count"].tolist() == [3]


def test_quantiles_vectorised_matches_scalar() -> None:
    sketch = QuantileSketch(0.02)
    sketch.add(np.random.default_rng(3).normal(size=1000))
    values = sketch.quantiles(QS)
    assert values.dtype == np.float64
    assert values.tolist() == [sketch.quantile(q) for q in QS]


@pytest.mark.parametrize("accuracy", [0.01, 0.3, 0.45])
def test_largest_float_does_not_overflow(accuracy: float) -> None:
    sketch = QuantileSketch(accuracy)
    top = float(np.finfo(np.float64).max)
    sketch.add(np.array([top, -top]))
    assert math.isfinite(sketch.quantile(1.0)) and math.isfinite(sketch.quantile(0.0))
    assert_within_bound(sketch, np.array([top, -top]), [0.0, 1.0])


@pytest.mark.parametrize("accuracy", [0, 1, -0.1, 1.5, float("nan"), "0.01", True])
def test_bad_accuracy_is_config_error(accuracy: object) -> None:
    with pytest.raises(ConfigError):
        QuantileSketch(accuracy)  # type: ignore[arg-type]


def test_merging_different_accuracies_is_config_error() -> None:
    with pytest.raises(ConfigError, match="accuracy"):
        QuantileSketch(0.01).merge(QuantileSketch(0.02))


@pytest.mark.parametrize("q", [-0.1, 1.01, float("nan"), "0.5", True])
def test_bad_q_is_config_error(q: object) -> None:
    sketch = QuantileSketch()
    sketch.add(np.array([1.0]))
    with pytest.raises(ConfigError):
        sketch.quantile(q)  # type: ignore[arg-type]


def test_empty_sketch_is_data_error() -> None:
    sketch = QuantileSketch()
    sketch.add(np.array([np.nan]))
    with pytest.raises(DataError, match="empty"):
        sketch.quantile(0.5)


@pytest.mark.parametrize("values", [np.array([1.0, np.inf]), np.array(["a", "b"])])
def test_infinite_or_text_values_are_data_error(values: np.ndarray) -> None:
    with pytest.raises(DataError):
        QuantileSketch().add(values)


def test_arrays_round_trip() -> None:
    sketch = QuantileSketch(0.02)
    sketch.add(np.random.default_rng(0).standard_cauchy(2_000))
    arrays = sketch.to_arrays()
    assert all(a.dtype == np.int64 for a in arrays.values())
    again = QuantileSketch.from_arrays(0.02, arrays)
    assert again.count == sketch.count
    assert again.quantiles(QS).tolist() == sketch.quantiles(QS).tolist()


def _valid_arrays() -> dict[str, np.ndarray]:
    sketch = QuantileSketch()
    sketch.add(np.array([-2.0, -1.0, 0.0, 1.0, 5.0]))
    return sketch.to_arrays()


def _mutations() -> list[tuple[str, object]]:
    def change(name: str, value: object) -> dict[str, object]:
        arrays: dict[str, object] = dict(_valid_arrays())
        arrays[name] = value
        return arrays

    missing = dict(_valid_arrays())
    del missing["zero_count"]
    return [
        ("missing", missing),
        ("extra", {**_valid_arrays(), "more": np.zeros(1, np.int64)}),
        ("not_a_dict", [np.zeros(1)]),
        ("float_counts", change("positive_counts", np.array([1.0, 1.0]))),
        ("list_not_array", change("positive_counts", [1, 1])),
        ("two_d", change("negative_keys", np.zeros((2, 1), np.int64))),
        ("length_mismatch", change("positive_keys", np.array([1, 2, 3]))),
        ("negative_count", change("negative_counts", np.array([-1, 2]))),
        ("negative_zero", change("zero_count", np.array([-1]))),
        ("zero_count_shape", change("zero_count", np.array([1, 1]))),
        ("key_out_of_range", change("positive_keys", np.array([0, 10**9]))),
        ("huge_uint", change("positive_counts", np.array([2**63, 1], dtype=np.uint64))),
    ]


@pytest.mark.parametrize(("case", "arrays"), _mutations(), ids=[m[0] for m in _mutations()])
def test_malformed_arrays_are_protocol_errors(case: str, arrays: object) -> None:
    with pytest.raises(ProtocolError):
        QuantileSketch.from_arrays(0.01, arrays)  # type: ignore[arg-type]
