"""Tests for mergeable column partials: exactness against numpy/pandas, stability, errors."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedloom.algorithms._statistics import (
    ColumnPartial,
    check_edges,
    column_partial,
    finalize,
    merge_partials,
)
from fedloom.errors import ConfigError, DataError

QS = (0.1, 0.25, 0.5, 0.75, 0.9)


def merged_partial(
    pieces: list[np.ndarray], edges: np.ndarray | None = None, accuracy: float | None = None
) -> ColumnPartial:
    partials = [column_partial(p, edges=edges, sketch_accuracy=accuracy) for p in pieces]
    return functools.reduce(merge_partials, partials)


def random_split(data: np.ndarray, rng: np.random.Generator, max_pods: int = 6) -> list[np.ndarray]:
    pods = int(rng.integers(1, max_pods + 1))
    cuts = np.sort(rng.integers(0, len(data) + 1, size=pods - 1))
    return np.split(rng.permutation(data), cuts)


def assert_matches_numpy(stats: dict[str, object], data: np.ndarray) -> None:
    clean = data[~np.isnan(data)]
    assert stats["count"] == len(clean)
    assert stats["sum"] == pytest.approx(np.sum(clean), rel=1e-12, abs=1e-9)
    assert stats["mean"] == pytest.approx(np.mean(clean), rel=1e-12, abs=1e-12)
    assert stats["var"] == pytest.approx(np.var(clean, ddof=1), rel=1e-9, abs=1e-12)
    assert stats["std"] == pytest.approx(np.std(clean, ddof=1), rel=1e-9, abs=1e-12)
    assert stats["min"] == np.min(clean)
    assert stats["max"] == np.max(clean)


@pytest.mark.parametrize("seed", range(20))
def test_merged_partials_equal_central_statistics(seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = rng.normal(rng.uniform(-100, 100), rng.uniform(0.1, 50), size=int(rng.integers(2, 3000)))
    data[rng.random(len(data)) < 0.05] = np.nan
    edges = np.linspace(np.nanmin(data), np.nanmax(data), 13)
    pieces = random_split(data, rng)
    stats = finalize(merged_partial(pieces, edges, 0.01), edges=edges, quantiles=QS)
    assert_matches_numpy(stats, data)
    clean = data[~np.isnan(data)]
    assert stats["histogram"]["counts"] == np.histogram(clean, bins=edges)[0].tolist()
    assert stats["histogram"]["edges"] == edges.tolist()
    ordered = np.sort(clean)
    for q in QS:
        x = ordered[math.floor(q * (len(ordered) - 1))]
        assert abs(stats["quantiles"][repr(q)] - x) <= 0.01 * abs(x) * (1 + 1e-9)
    json.dumps(stats, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(
    data=st.lists(
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=2, max_size=200
    ),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_split_matches_numpy(data: list[float], seed: int) -> None:
    values = np.array(data)
    stats = finalize(merged_partial(random_split(values, np.random.default_rng(seed))))
    clean = values
    assert stats["count"] == len(clean)
    assert stats["mean"] == pytest.approx(np.mean(clean), rel=1e-9, abs=1e-6)
    assert stats["var"] == pytest.approx(np.var(clean, ddof=1), rel=1e-7, abs=1e-6)
    assert stats["min"] == clean.min() and stats["max"] == clean.max()


def test_large_offset_is_stable_where_sum_of_squares_is_not() -> None:
    rng = np.random.default_rng(42)
    data = 1e9 + rng.normal(0.0, 1.0, size=100_000)
    expected = np.var(data, ddof=1)
    naive = (np.sum(data**2) - len(data) * np.mean(data) ** 2) / (len(data) - 1)
    assert abs(naive - expected) / expected > 1e-3  # the textbook formula breaks here
    for seed in range(5):
        pieces = random_split(data, np.random.default_rng(seed), max_pods=50)
        stats = finalize(merged_partial(pieces))
        np.testing.assert_allclose(stats["var"], expected, rtol=1e-12)  # asked: 1e-9
        np.testing.assert_allclose(stats["mean"], np.mean(data), rtol=1e-15)


def test_merge_order_does_not_matter() -> None:
    rng = np.random.default_rng(7)
    pieces = [rng.normal(size=n) for n in (5, 100, 1, 37)]
    partials = [column_partial(p) for p in pieces]
    forward = functools.reduce(merge_partials, partials)
    backward = functools.reduce(merge_partials, partials[::-1])
    tree = merge_partials(
        merge_partials(partials[0], partials[1]), merge_partials(partials[2], partials[3])
    )
    for other in (backward, tree):
        assert other.count == forward.count
        assert other.mean == pytest.approx(forward.mean, rel=1e-13)
        assert other.m2 == pytest.approx(forward.m2, rel=1e-13)


def test_nans_are_dropped_and_nullable_series_work() -> None:
    series = pd.Series([1, None, 3, None], dtype="Int64")
    partial = column_partial(series)
    assert partial.count == 2 and partial.sum == 4.0 and partial.mean == 2.0
    assert partial.m2 == 2.0 and partial.min == 1.0 and partial.max == 3.0
    stats = finalize(partial)
    assert stats["var"] == pd.Series([1.0, 3.0]).var()


def test_empty_and_single_value_partials() -> None:
    empty = column_partial(np.array([np.nan, np.nan]), edges=[0, 1, 2], sketch_accuracy=0.01)
    assert empty.count == 0 and math.isnan(empty.min) and math.isnan(empty.max)
    stats = finalize(empty, edges=[0, 1, 2], quantiles=(0.5,))
    assert stats == {
        "count": 0,
        "sum": 0.0,
        "mean": None,
        "var": None,
        "std": None,
        "min": None,
        "max": None,
        "histogram": {"edges": [0.0, 1.0, 2.0], "counts": [0, 0]},
        "quantiles": {"0.5": None},
    }
    one = column_partial(np.array([4.0]))
    assert finalize(one)["var"] is None and finalize(one)["mean"] == 4.0
    # An empty partial is the identity of merging.
    merged = merge_partials(column_partial(np.array([])), column_partial(np.array([1.0, 3.0])))
    assert (merged.count, merged.mean, merged.m2, merged.min, merged.max) == (2, 2.0, 2.0, 1, 3)


def test_histogram_drops_values_outside_the_edges() -> None:
    partial = column_partial(np.array([-5.0, 0.0, 0.5, 1.0, 9.0]), edges=[0.0, 0.5, 1.0])
    assert partial.histogram is not None
    assert partial.histogram.dtype == np.int64
    assert partial.histogram.tolist() == [1, 2]  # the last bin is closed, as numpy's


def test_merge_rejects_partials_that_do_not_fit() -> None:
    plain = column_partial(np.array([1.0]))
    binned = column_partial(np.array([1.0]), edges=[0, 1, 2])
    binned3 = column_partial(np.array([1.0]), edges=[0, 1, 2, 3])
    sketched = column_partial(np.array([1.0]), sketch_accuracy=0.01)
    sketched2 = column_partial(np.array([1.0]), sketch_accuracy=0.02)
    for a, b in [(plain, binned), (binned, binned3), (plain, sketched), (sketched, sketched2)]:
        with pytest.raises(ConfigError):
            merge_partials(a, b)


@pytest.mark.parametrize("values", [np.array([1.0, np.inf]), ["a", "b"], pd.Series(["x", "y"])])
def test_bad_values_are_data_errors(values: object) -> None:
    with pytest.raises(DataError):
        column_partial(values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "edges", [[1.0], [[0.0, 1.0]], [0.0, 0.0, 1.0], [1.0, 0.0], [0.0, np.inf], ["a", "b"]]
)
def test_bad_edges_are_config_errors(edges: object) -> None:
    with pytest.raises(ConfigError):
        check_edges(edges)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        column_partial(np.array([1.0]), edges=edges)  # type: ignore[arg-type]


def test_finalize_needs_fitting_edges() -> None:
    partial = column_partial(np.array([1.0, 2.0]), edges=[0, 1, 2])
    with pytest.raises(ConfigError):
        finalize(partial)
    with pytest.raises(ConfigError):
        finalize(partial, edges=[0, 1, 2, 3])
    with pytest.raises(ConfigError):
        finalize(column_partial(np.array([1.0]), sketch_accuracy=0.01), quantiles=(2.0,))
