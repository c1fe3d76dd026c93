"""Per-column summaries that pods compute locally and the modeller merges exactly.

A :class:`ColumnPartial` is what one pod releases about one column. Partials merge
pairwise with Chan, Golub and LeVeque's update for the mean and the sum of squared
deviations (``m2``), which stays accurate where the textbook ``sum(x**2) - n * mean**2``
loses every digit (large values with small spread). The mean travels as a float64 plus its
rounding error (``mean_low``), so merging does not lose the digits that a mean near 1e9
cannot hold: the merged variance of ``1e9 + N(0, 1)`` data matches ``numpy.var`` to about
1e-12. Merging is associative up to rounding; pods may be folded in any order.

Conventions:
    * NaN values are dropped per column: ``count`` is the number of non-null values.
    * ``var`` is the *sample* variance (``ddof=1``, as pandas), ``std`` its square root;
      both are ``None`` when fewer than two values were seen.
    * Histograms count values in ``[edges[0], edges[-1]]`` with ``numpy.histogram``
      semantics (the last bin is closed); values outside the edges are not counted.
    * A field a pod chose not to release (see ``analytics.compute_partials``) is NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedloom.algorithms._quantiles import ARRAY_NAMES, QuantileSketch
from fedloom.errors import ConfigError, DataError, ProtocolError


@dataclass(frozen=True, eq=False)
class ColumnPartial:
    """A mergeable summary of the non-null values of one column on one pod.

    Attributes:
        count: number of non-null values.
        sum: their sum.
        mean: their mean, rounded to float64 (0.0 when ``count == 0``).
        m2: sum of squared deviations from the local mean (computed in two passes).
        min: smallest value (NaN when ``count == 0``).
        max: largest value (NaN when ``count == 0``).
        histogram: int64 counts over edges shared by every pod, or ``None``.
        sketch: a quantile sketch of the values, or ``None``.
        mean_low: the rounding error of ``mean``: the mean is ``mean + mean_low`` to about
            twice float64 precision (0.0 is always valid, at the cost of that precision).
    """

    count: int
    sum: float
    mean: float
    m2: float
    min: float
    max: float
    histogram: np.ndarray | None = None
    sketch: QuantileSketch | None = None
    mean_low: float = 0.0


def _two_sum(a: float, b: float) -> tuple[float, float]:
    """``(s, e)`` with ``s = fl(a + b)`` and ``a + b == s + e`` exactly (Knuth)."""
    s = a + b
    b_virtual = s - a
    return s, (a - (s - b_virtual)) + (b - b_virtual)


def check_edges(edges: npt.ArrayLike, *, name: str = "histogram") -> np.ndarray:
    """``edges`` as a float64 array after checking it can bin values.

    Raises:
        ConfigError: fewer than two edges, not 1-D, not finite, or not strictly increasing.
    """
    try:
        array = np.asarray(edges, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} edges must be numbers: {exc}") from exc
    if array.ndim != 1 or len(array) < 2:
        raise ConfigError(f"{name} edges must be a 1-D list of at least two numbers")
    if not np.all(np.isfinite(array)) or not np.all(np.diff(array) > 0):
        raise ConfigError(f"{name} edges must be finite and strictly increasing")
    return array


def _clean(values: npt.ArrayLike | pd.Series) -> np.ndarray:
    """Non-null values as float64; DataError for text or infinities."""
    try:
        if isinstance(values, pd.Series | pd.Index):
            array = values.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"statistics need numeric values: {exc}") from exc
    array = array.ravel()
    array = array[~np.isnan(array)]
    if np.isinf(array).any():
        raise DataError("the values include infinities; statistics need finite numbers")
    return array


def column_partial(
    values: npt.ArrayLike | pd.Series,
    *,
    edges: npt.ArrayLike | None = None,
    sketch_accuracy: float | None = None,
) -> ColumnPartial:
    """Summarise one column's values (NaNs dropped).

    Args:
        values: the column (array, list or pandas Series; nullable dtypes are fine).
        edges: histogram bin edges shared by every pod, or ``None`` for no histogram.
        sketch_accuracy: relative accuracy of a quantile sketch, or ``None`` for none.

    Raises:
        DataError: the values are not numeric or include infinities.
        ConfigError: bad ``edges`` or ``sketch_accuracy``.
    """
    array = _clean(values)
    histogram = None
    if edges is not None:
        counts, _ = np.histogram(array, bins=check_edges(edges))
        histogram = counts.astype(np.int64)
    sketch = None
    if sketch_accuracy is not None:
        sketch = QuantileSketch(sketch_accuracy)
        sketch.add(array)
    count = len(array)
    if count == 0:
        return ColumnPartial(0, 0.0, 0.0, 0.0, math.nan, math.nan, histogram, sketch)
    first = float(np.mean(array))
    deviations = array - first
    residual = float(deviations.sum())
    # Corrected two-pass: `residual` is what rounding left out of `first`; it corrects
    # m2 and is kept (as mean_low) for merging.
    m2 = float(np.dot(deviations, deviations)) - residual**2 / count
    mean, mean_low = _two_sum(first, residual / count)
    return ColumnPartial(
        count=count,
        sum=float(np.sum(array)),
        mean=mean,
        m2=max(m2, 0.0),
        min=float(array.min()),
        max=float(array.max()),
        histogram=histogram,
        sketch=sketch,
        mean_low=mean_low,
    )


def merge_partials(a: ColumnPartial, b: ColumnPartial) -> ColumnPartial:
    """The partial of the union of the values behind ``a`` and ``b`` (inputs unchanged).

    Uses Chan et al.'s pairwise update: with ``delta = mean_b - mean_a`` and ``n = n_a +
    n_b``, ``mean = mean_a + delta * n_b / n`` and ``m2 = m2_a + m2_b + delta**2 * n_a *
    n_b / n``.

    Raises:
        ConfigError: one partial has a histogram (or sketch) and the other has not, the
            histograms have different lengths, or the sketches different accuracies.
    """
    if (a.histogram is None) != (b.histogram is None):
        raise ConfigError("cannot merge a partial that has a histogram with one that has not")
    histogram = None
    if a.histogram is not None and b.histogram is not None:
        if a.histogram.shape != b.histogram.shape:
            raise ConfigError(
                f"cannot merge histograms of {len(a.histogram)} and {len(b.histogram)} bins"
            )
        histogram = a.histogram + b.histogram
    if (a.sketch is None) != (b.sketch is None):
        raise ConfigError("cannot merge a partial that has a quantile sketch with one that has not")
    sketch = a.sketch.merge(b.sketch) if a.sketch is not None and b.sketch is not None else None
    count = a.count + b.count
    if a.count == 0 or b.count == 0:
        mean, mean_low, m2 = (
            (b.mean, b.mean_low, b.m2) if a.count == 0 else (a.mean, a.mean_low, a.m2)
        )
    else:
        delta = (b.mean - a.mean) + (b.mean_low - a.mean_low)
        mean, low = _two_sum(a.mean, delta * (b.count / count))
        mean, mean_low = _two_sum(mean, low + a.mean_low)
        m2 = a.m2 + b.m2 + delta * delta * (a.count * b.count / count)
    return ColumnPartial(
        count=count,
        sum=a.sum + b.sum,
        mean=mean,
        m2=m2,
        min=float(np.fmin(a.min, b.min)),
        max=float(np.fmax(a.max, b.max)),
        histogram=histogram,
        sketch=sketch,
        mean_low=mean_low,
    )


def quantile_key(q: float) -> str:
    """The key a quantile's value is reported under: ``0.25 -> "0.25"``, ``1 -> "1.0"``."""
    return repr(float(q))


def _number(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def finalize(
    partial: ColumnPartial,
    *,
    edges: npt.ArrayLike | None = None,
    quantiles: Sequence[float] = (),
) -> dict[str, Any]:
    """Every statistic the partial supports, as JSON-able values.

    Returns a dict with ``count`` (int), ``sum``, ``mean``, ``var`` (sample variance,
    ``ddof=1``), ``std``, ``min``, ``max`` (float, or ``None`` where undefined or not
    released), plus ``histogram`` (``{"edges": [...], "counts": [...]}``) when the
    partial has one, and ``quantiles`` (``{quantile_key(q): value}``, within the sketch's
    relative accuracy; ``None`` values for an empty column) when it has a sketch and
    ``quantiles`` is not empty.

    Raises:
        ConfigError: the partial has a histogram but ``edges`` is missing or does not fit,
            or a quantile is not in [0, 1].
    """
    count = partial.count
    var = partial.m2 / (count - 1) if count >= 2 else math.nan
    result: dict[str, Any] = {
        "count": int(count),
        "sum": _number(partial.sum),
        "mean": _number(partial.mean + partial.mean_low) if count else None,
        "var": _number(var),
        "std": _number(math.sqrt(var)) if not math.isnan(var) else None,
        "min": _number(partial.min) if count else None,
        "max": _number(partial.max) if count else None,
    }
    if partial.histogram is not None:
        if edges is None:
            raise ConfigError("finalize needs the histogram edges")
        checked = check_edges(edges)
        if len(checked) != len(partial.histogram) + 1:
            raise ConfigError(
                f"{len(checked)} edges do not fit a histogram of {len(partial.histogram)} bins"
            )
        result["histogram"] = {
            "edges": [float(e) for e in checked],
            "counts": [int(c) for c in partial.histogram],
        }
    if partial.sketch is not None and len(quantiles):
        keys = [quantile_key(q) for q in quantiles]
        try:
            values: list[float | None] = [float(v) for v in partial.sketch.quantiles(quantiles)]
        except DataError:  # an empty column (the quantiles were already checked)
            values = [None] * len(keys)
        result["quantiles"] = dict(zip(keys, values, strict=True))
    return result


# --- wire form ---------------------------------------------------------------------------

WIRE_FLOAT_FIELDS = ("sum", "mean", "mean_low", "m2", "min", "max")
WIRE_FIELDS = frozenset({"name", "count", *WIRE_FLOAT_FIELDS, "histogram", "sketch_accuracy"})
"""The keys of each column's map in a :func:`partials_to_wire` body."""

MAX_WIRE_COUNT = 2**62
MAX_WIRE_BINS = 100_000


def partials_to_wire(
    partials: Mapping[str, ColumnPartial],
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The wire form of ``partials``: ``(body, tensors)``.

    ``body`` is ``{"columns": [{"name": ..., "count": ..., ...}]}`` (msgpack-able);
    ``tensors`` holds the histograms and sketch arrays of column ``i``, named
    ``c{i}.histogram`` and ``c{i}.sketch.{array}``.
    """
    entries: list[dict[str, Any]] = []
    tensors: dict[str, np.ndarray] = {}
    for index, (column, partial) in enumerate(partials.items()):
        entry: dict[str, Any] = {"name": column, "count": int(partial.count)}
        entry.update({name: float(getattr(partial, name)) for name in WIRE_FLOAT_FIELDS})
        entry["histogram"] = partial.histogram is not None
        sketch = partial.sketch
        entry["sketch_accuracy"] = None if sketch is None else sketch.relative_accuracy
        if partial.histogram is not None:
            tensors[f"c{index}.histogram"] = np.ascontiguousarray(partial.histogram, np.int64)
        if sketch is not None:
            for name, array in sketch.to_arrays().items():
                tensors[f"c{index}.sketch.{name}"] = array
        entries.append(entry)
    return {"columns": entries}, tensors


def _wire_tensor(tensors: Mapping[str, np.ndarray], name: str, used: set[str]) -> np.ndarray:
    if name not in tensors:
        raise ProtocolError(f"tensor {name!r} is missing")
    used.add(name)
    return tensors[name]


def _partial_from_wire(
    entry: Mapping[str, object], tensors: Mapping[str, np.ndarray], prefix: str, used: set[str]
) -> ColumnPartial:
    """Rebuild and validate one column's partial (NaN floats mean "not released")."""
    count = entry["count"]
    if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < MAX_WIRE_COUNT:
        raise ProtocolError(f"partial count must be a non-negative int, not {count!r}")
    floats: dict[str, float] = {}
    for name in WIRE_FLOAT_FIELDS:
        value = entry[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isinf(value):
            raise ProtocolError(f"partial field {name!r} must be a finite number, not {value!r}")
        floats[name] = float(value)
    if floats["m2"] < 0 or floats["min"] > floats["max"]:  # False when either is NaN
        raise ProtocolError("partial has a negative 'm2' or a 'min' above its 'max'")
    histogram = None
    if not isinstance(entry["histogram"], bool):
        raise ProtocolError("partial field 'histogram' must be a bool")
    if entry["histogram"]:
        raw = _wire_tensor(tensors, f"{prefix}.histogram", used)
        if not isinstance(raw, np.ndarray) or raw.ndim != 1 or not 1 <= len(raw) <= MAX_WIRE_BINS:
            raise ProtocolError(f"a histogram must be a 1-D array of 1..{MAX_WIRE_BINS} counts")
        if not np.issubdtype(raw.dtype, np.integer) or (raw < 0).any():
            raise ProtocolError("a histogram must hold non-negative integers")
        if raw.sum(dtype=np.float64) > count:
            raise ProtocolError("a histogram counts more values than the partial's 'count'")
        histogram = raw.astype(np.int64)
    sketch = None
    accuracy = entry["sketch_accuracy"]
    if accuracy is not None:
        if not isinstance(accuracy, float) or not 0 < accuracy < 1:
            raise ProtocolError(f"partial 'sketch_accuracy' must be in (0, 1), not {accuracy!r}")
        arrays = {a: _wire_tensor(tensors, f"{prefix}.sketch.{a}", used) for a in ARRAY_NAMES}
        sketch = QuantileSketch.from_arrays(accuracy, arrays)
        if sketch.count != count:
            raise ProtocolError("the quantile sketch does not count the same values as 'count'")
    return ColumnPartial(count, histogram=histogram, sketch=sketch, **floats)


def partials_from_wire(body: object, tensors: Mapping[str, np.ndarray]) -> dict[str, ColumnPartial]:
    """Rebuild :func:`partials_to_wire` output, validating every field and tensor.

    NaN is accepted in the float fields (a field the pod did not release); infinities,
    negative counts, a negative ``m2``, ``min > max``, or a histogram or sketch that counts
    more values than ``count`` are not.

    Raises:
        ProtocolError: a malformed body (wrong types, unknown, missing or repeated fields or
            columns, out-of-range values) or tensors that are missing, extra, of the wrong
            dtype or shape.
    """
    if not isinstance(body, Mapping) or set(body) != {"columns"}:
        raise ProtocolError("an analytics result body must be a map with only 'columns'")
    entries = body["columns"]
    if not isinstance(entries, list | tuple) or not isinstance(tensors, Mapping):
        raise ProtocolError("'columns' must be a list of partials, and tensors a map")
    partials: dict[str, ColumnPartial] = {}
    used: set[str] = set()
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping) or set(entry) != WIRE_FIELDS:
            raise ProtocolError(f"column partial {index} must be a map of {sorted(WIRE_FIELDS)}")
        name = entry["name"]
        if not isinstance(name, str) or not name or name in partials:
            raise ProtocolError(f"column partial {index} has a missing or repeated name")
        partials[name] = _partial_from_wire(entry, tensors, f"c{index}", used)
    extra = sorted(set(tensors) - used)
    if extra:
        raise ProtocolError(f"unexpected tensors in an analytics result: {extra[:10]}")
    return partials
