"""A mergeable quantile summary with a relative-error guarantee (DDSketch-style).

Every value ``x`` with ``|x| >= ZERO_THRESHOLD`` falls into the logarithmic bucket
``i = ceil(log_gamma(|x|))`` of its sign, with ``gamma = (1 + alpha) / (1 - alpha)``; the
bucket covers ``(gamma**(i-1), gamma**i]``. Smaller values fall into a single zero bucket.
A sketch is only counts per bucket, so merging two sketches (from two pods) is exact: it
adds the counts, and the merged sketch equals the sketch of the concatenated data.

Guarantee (tested): let ``x_0 <= ... <= x_{n-1}`` be every non-NaN value added to a
sketch and to the sketches merged into it, and ``r = floor(q * (n - 1))``. Then
``quantile(q)`` returns ``v`` with ``|v - x_r| <= alpha * |x_r|`` when
``|x_r| >= ZERO_THRESHOLD``, and ``v == 0`` (so ``|v - x_r| < ZERO_THRESHOLD``) otherwise,
up to floating-point rounding (relative slack about 1e-12). The bucket count is bounded
by the float range (about 74,000 buckets at ``alpha = 0.01``), so no buckets are ever
collapsed and the guarantee holds for any data and any number of merges.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from fedloom.errors import ConfigError, DataError, ProtocolError

DEFAULT_RELATIVE_ACCURACY = 0.01
ZERO_THRESHOLD = 1e-12
"""Values with a smaller magnitude are counted in the zero bucket and reported as 0."""

ARRAY_NAMES = ("positive_keys", "positive_counts", "negative_keys", "negative_counts", "zero_count")
"""The keys of :meth:`QuantileSketch.to_arrays`."""

_MAX_FLOAT = float(np.finfo(np.float64).max)
_Store = tuple[np.ndarray, np.ndarray]  # (sorted unique int64 keys, positive int64 counts)
_EMPTY: _Store = (np.zeros(0, np.int64), np.zeros(0, np.int64))


def _merge_stores(a: _Store, b: _Store) -> _Store:
    """Add two sparse bucket stores (duplicates summed, zero counts dropped)."""
    keys = np.concatenate([a[0], b[0]])
    counts = np.concatenate([a[1], b[1]])
    unique, inverse = np.unique(keys, return_inverse=True)
    total = np.zeros(len(unique), dtype=np.int64)
    np.add.at(total, inverse, counts)
    keep = total > 0
    return unique[keep], total[keep]


class QuantileSketch:
    """Counts of values in logarithmic buckets; see the module docstring for the bound.

    Raises:
        ConfigError: ``relative_accuracy`` is not a number in (0, 1).
    """

    def __init__(self, relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY) -> None:
        if (
            isinstance(relative_accuracy, bool)
            or not isinstance(relative_accuracy, int | float)
            or not 0 < relative_accuracy < 1
        ):
            raise ConfigError(
                f"relative_accuracy must be a number in (0, 1), not {relative_accuracy!r}"
            )
        self._alpha = float(relative_accuracy)
        self._gamma = (1 + self._alpha) / (1 - self._alpha)
        self._log_gamma = math.log(self._gamma)
        self._positive: _Store = _EMPTY
        self._negative: _Store = _EMPTY
        self._zero = 0
        # Keys any finite |x| >= ZERO_THRESHOLD can have, with a margin for rounding.
        self._min_key = math.floor(math.log(ZERO_THRESHOLD) / self._log_gamma) - 1
        self._max_key = math.ceil(math.log(_MAX_FLOAT) / self._log_gamma) + 1

    @property
    def relative_accuracy(self) -> float:
        """``alpha``: the relative error bound of :meth:`quantile`."""
        return self._alpha

    @property
    def count(self) -> int:
        """How many (non-NaN) values the sketch has seen."""
        return int(self._positive[1].sum() + self._negative[1].sum()) + self._zero

    def _keys(self, magnitudes: np.ndarray) -> np.ndarray:
        keys: np.ndarray = np.ceil(np.log(magnitudes) / self._log_gamma).astype(np.int64)
        return keys

    def add(self, values: np.ndarray) -> None:
        """Add every value in ``values`` (any shape); NaN values are skipped.

        Raises:
            DataError: ``values`` holds infinities or cannot be read as numbers.
        """
        try:
            flat = np.asarray(values, dtype=np.float64).ravel()
        except (TypeError, ValueError) as exc:
            raise DataError(f"a quantile sketch needs numbers: {exc}") from exc
        flat = flat[~np.isnan(flat)]
        if np.isinf(flat).any():
            raise DataError("a quantile sketch cannot summarise infinite values")
        positive = flat[flat >= ZERO_THRESHOLD]
        negative = -flat[flat <= -ZERO_THRESHOLD]
        self._zero += len(flat) - len(positive) - len(negative)
        for magnitudes, sign in ((positive, 1), (negative, -1)):
            if len(magnitudes) == 0:
                continue
            keys, counts = np.unique(self._keys(magnitudes), return_counts=True)
            store = (keys, counts.astype(np.int64))
            if sign > 0:
                self._positive = _merge_stores(self._positive, store)
            else:
                self._negative = _merge_stores(self._negative, store)

    def merge(self, other: QuantileSketch) -> QuantileSketch:
        """A new sketch holding both sketches' values; neither input changes.

        Raises:
            ConfigError: the sketches were built with different relative accuracies.
        """
        if not isinstance(other, QuantileSketch):
            raise ConfigError(f"can only merge a QuantileSketch, not {type(other).__name__}")
        if other._alpha != self._alpha:
            raise ConfigError(
                f"cannot merge sketches of relative accuracy {self._alpha} and {other._alpha}"
            )
        merged = QuantileSketch(self._alpha)
        merged._positive = _merge_stores(self._positive, other._positive)
        merged._negative = _merge_stores(self._negative, other._negative)
        merged._zero = self._zero + other._zero
        return merged

    def quantile(self, q: float) -> float:
        """The value at rank ``floor(q * (count - 1))``, within the stated relative error.

        Raises:
            ConfigError: ``q`` is not a number in [0, 1].
            DataError: the sketch is empty.
        """
        return float(self.quantiles([q])[0])

    def quantiles(self, qs: Sequence[float] | np.ndarray) -> np.ndarray:
        """:meth:`quantile` for many ``q`` at once (float64 array).

        Raises:
            ConfigError: a ``q`` is not a number in [0, 1].
            DataError: the sketch is empty.
        """
        for q in np.asarray(qs, dtype=object).ravel():
            if isinstance(q, bool) or not isinstance(q, int | float | np.number):
                raise ConfigError(f"a quantile must be a number in [0, 1], not {q!r}")
            if not 0 <= float(q) <= 1:
                raise ConfigError(f"a quantile must be in [0, 1], not {q!r}")
        total = self.count
        if total == 0:
            raise DataError("cannot take a quantile of an empty sketch")
        ranks = np.floor(np.asarray(qs, dtype=np.float64) * (total - 1)).astype(np.int64)
        # Buckets in value order: most negative first, then zero, then positive.
        neg_keys, neg_counts = self._negative
        keys = np.concatenate([neg_keys[::-1], [0], self._positive[0]])
        signs = np.concatenate([-np.ones(len(neg_keys)), [0.0], np.ones(len(self._positive[0]))])
        counts = np.concatenate([neg_counts[::-1], [self._zero], self._positive[1]])
        bucket = np.searchsorted(np.cumsum(counts), ranks, side="right")
        # The midpoint (in relative terms) of (gamma**(k-1), gamma**k]; never overflows.
        with np.errstate(over="ignore"):  # the top bucket may round past the float range
            lower = np.exp((keys[bucket] - 1) * self._log_gamma)
            values = np.minimum(lower * (2 * self._gamma / (self._gamma + 1)), _MAX_FLOAT)
        return np.asarray(signs[bucket] * values, dtype=np.float64)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The bucket counts as int64 arrays named in :data:`ARRAY_NAMES` (copies)."""
        return {
            "positive_keys": self._positive[0].copy(),
            "positive_counts": self._positive[1].copy(),
            "negative_keys": self._negative[0].copy(),
            "negative_counts": self._negative[1].copy(),
            "zero_count": np.array([self._zero], dtype=np.int64),
        }

    @classmethod
    def from_arrays(cls, accuracy: float, arrays: Mapping[str, np.ndarray]) -> QuantileSketch:
        """Rebuild a sketch from :meth:`to_arrays` output (for example, off the wire).

        Raises:
            ConfigError: ``accuracy`` is not a number in (0, 1).
            ProtocolError: missing or extra arrays, non-integer dtypes, arrays that are not
                1-D, keys and counts of different lengths, negative counts, or keys no
                finite value could have.
        """
        sketch = cls(accuracy)
        if not isinstance(arrays, Mapping) or set(arrays) != set(ARRAY_NAMES):
            got = sorted(map(str, arrays)) if isinstance(arrays, Mapping) else type(arrays).__name__
            raise ProtocolError(f"a sketch needs exactly the arrays {list(ARRAY_NAMES)}, got {got}")
        checked: dict[str, np.ndarray] = {}
        for name in ARRAY_NAMES:
            array = arrays[name]
            if not isinstance(array, np.ndarray) or array.ndim != 1:
                raise ProtocolError(f"sketch array {name!r} must be a 1-D numpy array")
            if not np.issubdtype(array.dtype, np.integer):
                raise ProtocolError(f"sketch array {name!r} must hold integers, not {array.dtype}")
            if array.dtype == np.uint64 and len(array) and array.max() > np.iinfo(np.int64).max:
                raise ProtocolError(f"sketch array {name!r} has values out of range")
            checked[name] = array.astype(np.int64)
        if len(checked["zero_count"]) != 1:
            raise ProtocolError("sketch array 'zero_count' must hold exactly one count")
        stores = []
        for sign in ("positive", "negative"):
            keys, counts = checked[f"{sign}_keys"], checked[f"{sign}_counts"]
            if len(keys) != len(counts):
                raise ProtocolError(f"sketch {sign} keys and counts differ in length")
            if len(keys) and (keys.min() < sketch._min_key or keys.max() > sketch._max_key):
                raise ProtocolError(f"sketch {sign} keys are outside the possible range")
            stores.append((keys, counts))
        every_count = np.concatenate([checked["positive_counts"], checked["negative_counts"]])
        if (every_count < 0).any() or checked["zero_count"][0] < 0:
            raise ProtocolError("sketch counts must not be negative")
        if int(every_count.sum(dtype=np.float64)) + int(checked["zero_count"][0]) >= 2**62:
            raise ProtocolError("sketch counts are implausibly large")
        sketch._positive = _merge_stores(_EMPTY, stores[0])
        sketch._negative = _merge_stores(_EMPTY, stores[1])
        sketch._zero = int(checked["zero_count"][0])
        return sketch

    def __repr__(self) -> str:
        return f"QuantileSketch(relative_accuracy={self._alpha}, count={self.count})"
