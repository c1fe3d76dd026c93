"""Tests for the seeded IID and Dirichlet partitions."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.datasources import dirichlet_partition, iid_partition
from fedloom.errors import ConfigError


def _assert_exact_cover(parts: list[np.ndarray], n: int) -> None:
    joined = np.concatenate(parts)
    assert len(joined) == n
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))
    for part in parts:
        assert part.dtype == np.int64
        assert np.all(np.diff(part) > 0)  # sorted, no repeats


def _mean_label_entropy(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    entropies = []
    for part in parts:
        counts = np.bincount(labels[part], minlength=labels.max() + 1)
        p = counts[counts > 0] / counts.sum()
        entropies.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(entropies))


@pytest.mark.parametrize(("n", "k"), [(10, 1), (10, 3), (101, 10), (7, 7), (1000, 64)])
def test_iid_covers_every_index_once_with_balanced_sizes(n: int, k: int) -> None:
    parts = iid_partition(n, k, seed=5)
    assert len(parts) == k
    _assert_exact_cover(parts, n)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_iid_is_seeded() -> None:
    a = iid_partition(500, 7, seed=1)
    b = iid_partition(500, 7, seed=1)
    c = iid_partition(500, 7, seed=2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


@pytest.mark.parametrize(
    ("n", "k", "seed"), [(10, 0, 0), (3, 4, 0), (10, 2, -1), (10, 2.0, 0), (-1, 1, 0), (5, True, 0)]
)
def test_iid_rejects_bad_arguments(n: int, k: int, seed: int) -> None:
    with pytest.raises(ConfigError):
        iid_partition(n, k, seed=seed)


@pytest.fixture
def labels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 10, size=2_000)


@pytest.mark.parametrize("alpha", [0.05, 0.5, 1.0, 100.0])
def test_dirichlet_covers_every_index_once(labels: np.ndarray, alpha: float) -> None:
    parts = dirichlet_partition(labels, 10, alpha=alpha, seed=3)
    assert len(parts) == 10
    _assert_exact_cover(parts, len(labels))
    assert min(len(p) for p in parts) >= 1


def test_dirichlet_is_seeded(labels: np.ndarray) -> None:
    a = dirichlet_partition(labels, 8, alpha=0.3, seed=11)
    b = dirichlet_partition(labels, 8, alpha=0.3, seed=11)
    c = dirichlet_partition(labels, 8, alpha=0.3, seed=12)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))


def test_small_alpha_is_more_skewed_than_large_alpha(labels: np.ndarray) -> None:
    for seed in range(5):
        skewed = _mean_label_entropy(labels, dirichlet_partition(labels, 10, alpha=0.1, seed=seed))
        mixed = _mean_label_entropy(labels, dirichlet_partition(labels, 10, alpha=100, seed=seed))
        assert skewed < 0.7 * mixed
        assert mixed > 0.95 * np.log(10)  # near-uniform label mix per client


def test_dirichlet_respects_min_samples(labels: np.ndarray) -> None:
    parts = dirichlet_partition(labels, 20, alpha=0.5, seed=0, min_samples_per_client=30)
    assert min(len(p) for p in parts) >= 30
    _assert_exact_cover(parts, len(labels))


def test_dirichlet_accepts_string_labels() -> None:
    labels = np.array(["cat", "dog", "eel"] * 20)
    parts = dirichlet_partition(labels, 4, alpha=1.0, seed=0)
    _assert_exact_cover(parts, 60)


def test_dirichlet_gives_up_with_config_error() -> None:
    labels = np.repeat(np.arange(2), 10)
    with pytest.raises(ConfigError, match="attempts"):
        dirichlet_partition(
            labels, 10, alpha=0.001, seed=0, min_samples_per_client=2, max_attempts=3
        )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_clients": 0, "alpha": 1.0},
        {"num_clients": 3, "alpha": 0.0},
        {"num_clients": 3, "alpha": -1.0},
        {"num_clients": 3, "alpha": float("nan")},
        {"num_clients": 3, "alpha": float("inf")},
        {"num_clients": 21, "alpha": 1.0},
        {"num_clients": 5, "alpha": 1.0, "min_samples_per_client": 5},
        {"num_clients": 3, "alpha": 1.0, "max_attempts": 0},
        {"num_clients": 3, "alpha": 1.0, "seed": -3},
    ],
)
def test_dirichlet_rejects_bad_arguments(kwargs: dict[str, float]) -> None:
    labels = np.repeat(np.arange(4), 5)
    options: dict[str, float] = {"seed": 0, **kwargs}
    with pytest.raises(ConfigError):
        dirichlet_partition(labels, **options)  # type: ignore[arg-type]


def test_dirichlet_rejects_non_1d_labels() -> None:
    with pytest.raises(ConfigError, match="1-D"):
        dirichlet_partition(np.zeros((4, 2), dtype=int), 2, alpha=1.0, seed=0)
