"""Federated descriptive statistics: the request, the pod side and the modeller side.

The analytics protocol carries the messages; this module only computes:

1. The modeller builds an :class:`AnalyticsRequest` and sends ``request.to_config()``.
2. If ``request.columns_needing_edges()`` is not empty, each pod answers a pre-round with
   :func:`column_ranges`; the modeller turns those into shared bin edges with
   :func:`edges_from_ranges` and sends them to the pods.
3. Each pod runs :func:`compute_partials` and sends :func:`partials_to_wire` output.
4. The modeller decodes with :func:`partials_from_wire` and calls :func:`combine`.

Pods release only what was asked for: a :class:`ColumnPartial` field that no requested
statistic needs is sent as NaN. A pod refuses the whole request (never part of it) if a
requested column has fewer non-null values than ``max(pod threshold, request.min_rows)``.
Variances are sample variances (``ddof=1``); quantiles follow ``QuantileSketch``'s bound.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd

from fedloom.algorithms._analytics_request import (
    MAX_HISTOGRAM_BINS,
    STATISTIC_NAMES,
    AnalyticsRequest,
    check_count,
)
from fedloom.algorithms._statistics import (
    ColumnPartial,
    check_edges,
    column_partial,
    finalize,
    merge_partials,
    partials_from_wire,
    partials_to_wire,
)
from fedloom.errors import (
    AggregationError,
    ConfigError,
    EmptyDatasetError,
    MissingColumnError,
    PrivacyThresholdError,
    ProtocolError,
    SchemaMismatchError,
)

__all__ = [
    "STATISTIC_NAMES", "AnalyticsRequest", "column_ranges", "combine", "compute_partials",
    "edges_from_ranges", "partials_from_wire", "partials_to_wire",
]  # fmt: skip


def _edges(column: str, request: AnalyticsRequest, edges: Mapping[str, Any]) -> np.ndarray:
    """The bin edges for ``column`` (given, else from ``histogram_range``), checked."""
    if column in edges:
        checked = check_edges(edges[column], name=f"histogram {column!r}")
    elif column in request.histogram_range:
        checked = np.linspace(*request.histogram_range[column], request.histogram_bins + 1)
    else:
        raise ConfigError(f"no histogram edges for column {column!r}: run the min/max round")
    if len(checked) != request.histogram_bins + 1:
        raise ConfigError(
            f"{len(checked)} edges for column {column!r}; expected histogram_bins + 1"
        )
    return checked


def _schema_ok(series: pd.Series, kind: str) -> bool:
    types = pd.api.types
    values = series.dropna()
    if kind == "string":
        return types.is_string_dtype(series) or (
            types.is_object_dtype(series) and all(isinstance(v, str) for v in values)
        )
    if kind == "float":
        return types.is_float_dtype(series)
    if kind == "integer":
        if types.is_float_dtype(series):  # CSV integers with gaps load as floats
            return bool(np.all(values.to_numpy() == np.round(values.to_numpy())))
        return types.is_integer_dtype(series)
    return types.is_numeric_dtype(series)


def _plan(
    frame: pd.DataFrame, request: AnalyticsRequest, min_rows: int
) -> dict[str, tuple[str, ...]]:
    """Column -> statistics for this pod, after every check that could refuse the task."""
    check_count(min_rows, "min_rows", 0, None)
    if not isinstance(frame, pd.DataFrame) or len(frame) == 0 or frame.shape[1] == 0:
        raise EmptyDatasetError("the dataset has no rows; no statistics can be computed")
    present = ", ".join(repr(str(c)) for c in list(frame.columns)[:20])
    for column, kind in (request.schema or {}).items():
        if column not in frame.columns:
            raise MissingColumnError(f"schema column {column!r} is not in the dataset ({present})")
        if not _schema_ok(frame[column], kind):
            raise SchemaMismatchError(
                f"column {column!r} is {frame[column].dtype}, but the schema says {kind}"
            )
    plan = request.column_statistics()
    if not plan:
        numeric = [str(c) for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c])]
        if not numeric:
            raise SchemaMismatchError("the dataset has no numeric columns to summarise")
        plan = {column: request.statistics for column in numeric}
    for column in plan:
        if column not in frame.columns:
            raise MissingColumnError(f"column {column!r} is not in the dataset ({present})")
        if not pd.api.types.is_numeric_dtype(frame[column]):
            raise SchemaMismatchError(
                f"column {column!r} is {frame[column].dtype}; statistics need a numeric column"
            )
    threshold = max(min_rows, request.min_rows or 0)
    for column in plan:
        if int(frame[column].notna().sum()) < threshold:
            raise PrivacyThresholdError(
                f"column {column!r} has fewer non-null values than the minimum of {threshold} "
                "rows; no statistics were released"
            )
    return plan


def _release(partial: ColumnPartial, stats: tuple[str, ...]) -> ColumnPartial:
    """Blank (NaN) the fields that no requested statistic needs."""
    wanted = set(stats)
    nan = math.nan
    moments = bool(wanted & {"sum", "mean", "var", "std"})
    return replace(
        partial,
        sum=partial.sum if moments else nan,
        mean=partial.mean if moments else nan,
        mean_low=partial.mean_low if moments else nan,
        m2=partial.m2 if wanted & {"var", "std"} else nan,
        min=partial.min if "min" in wanted else nan,
        max=partial.max if "max" in wanted else nan,
    )


def compute_partials(
    frame: pd.DataFrame,
    request: AnalyticsRequest,
    *,
    edges: Mapping[str, np.ndarray],
    min_rows: int,
) -> dict[str, ColumnPartial]:
    """Pod side: one partial per requested column, or a refusal of the whole request.

    Args:
        frame: the pod's table.
        request: what the modeller asked for.
        edges: shared histogram edges per column (from :func:`edges_from_ranges`).
        min_rows: the pod's own threshold; ``request.min_rows`` applies when stricter.

    Raises:
        EmptyDatasetError: the frame has no rows.
        MissingColumnError: a requested or schema column is not in the frame.
        SchemaMismatchError: the frame does not match ``request.schema``, or a requested
            column is not numeric.
        PrivacyThresholdError: a requested column has too few non-null values.
        ConfigError: missing or unfit histogram edges, or a bad ``min_rows``.
        DataError: a column holds infinite values.
    """
    partials: dict[str, ColumnPartial] = {}
    for column, stats in _plan(frame, request, min_rows).items():
        partial = column_partial(
            frame[column],
            edges=_edges(column, request, edges) if "histogram" in stats else None,
            sketch_accuracy=request.sketch_accuracy if "quantiles" in stats else None,
        )
        partials[column] = _release(partial, stats)
    return partials


def column_ranges(
    frame: pd.DataFrame, request: AnalyticsRequest, *, min_rows: int
) -> dict[str, tuple[float, float]]:
    """Pod side of the pre-round: ``(min, max)`` of each column needing histogram edges.

    Runs every check of :func:`compute_partials` first; a column with no non-null values
    is left out.

    Raises:
        The same errors as :func:`compute_partials`.
    """
    _plan(frame, request, min_rows)
    ranges: dict[str, tuple[float, float]] = {}
    for column in request.columns_needing_edges():
        partial = column_partial(frame[column])
        if partial.count:
            ranges[column] = (partial.min, partial.max)
    return ranges


def edges_from_ranges(
    ranges_per_pod: Iterable[Mapping[str, tuple[float, float]]], bins: int
) -> dict[str, np.ndarray]:
    """Shared ``np.linspace`` edges over the global min/max of every pod's ranges.

    A column whose values are all equal gets the range ``(v - 0.5, v + 0.5)``, as
    ``numpy.histogram`` does.

    Raises:
        ConfigError: ``bins`` is not an int in 1..MAX_HISTOGRAM_BINS.
        ProtocolError: a range is not two finite numbers with ``low <= high``.
    """
    check_count(bins, "bins", 1, MAX_HISTOGRAM_BINS)
    bounds: dict[str, tuple[float, float]] = {}
    for ranges in ranges_per_pod:
        if not isinstance(ranges, Mapping):
            raise ProtocolError("column ranges must be a map of column -> [low, high]")
        for column, pair in ranges.items():
            ok = isinstance(pair, list | tuple) and len(pair) == 2
            values = [v for v in pair if isinstance(v, int | float) and not isinstance(v, bool)]
            if not ok or len(values) != 2 or not all(map(math.isfinite, values)):
                raise ProtocolError(f"range of column {column!r} must be two finite numbers")
            if values[0] > values[1]:
                raise ProtocolError(f"range of column {column!r} has low > high")
            old = bounds.get(str(column), (math.inf, -math.inf))
            bounds[str(column)] = (min(old[0], values[0]), max(old[1], values[1]))
    edges = {}
    for column, (low, high) in bounds.items():
        widen = 0.5 if low == high else 0.0
        edges[column] = np.linspace(low - widen, high + widen, bins + 1)
    return edges


_NEEDED_FIELDS = {
    "sum": ("sum",),
    "mean": ("mean", "mean_low"),
    "var": ("mean", "mean_low", "m2"),
    "std": ("mean", "mean_low", "m2"),
    "min": ("min",),
    "max": ("max",),
}
"""The partial fields each statistic is combined from (NaN there means "not released")."""
_MIN_MAX = ("min", "max")


def _check_pod(
    pod: str,
    column: str,
    partial: ColumnPartial,
    stats: tuple[str, ...],
    *,
    bins: int | None,
    accuracy: float,
) -> None:
    """ProtocolError unless ``partial`` carries what ``stats`` need, in the agreed shape."""
    problem = None
    if (partial.histogram is not None) != ("histogram" in stats):
        problem = "a histogram was sent but not asked for, or asked for but not sent"
    elif partial.histogram is not None and len(partial.histogram) != bins:
        problem = f"{len(partial.histogram)} histogram bins; expected {bins}"
    elif (partial.sketch is not None) != ("quantiles" in stats):
        problem = "a quantile sketch was sent but not asked for, or asked for but not sent"
    elif partial.sketch is not None and partial.sketch.relative_accuracy != accuracy:
        problem = f"sketch accuracy {partial.sketch.relative_accuracy}; expected {accuracy}"
    for stat in stats:
        for name in _NEEDED_FIELDS.get(stat, ()):
            # An empty column legitimately has no min or max.
            if math.isnan(getattr(partial, name)) and (partial.count or name not in _MIN_MAX):
                problem = problem or f"{name!r} is missing (NaN) but {stat!r} was requested"
    if problem:
        raise ProtocolError(
            f"pod {pod!r} sent an unusable partial for column {column!r}: {problem}"
        )


def combine(
    partials_per_pod: Mapping[str, Mapping[str, ColumnPartial]],
    request: AnalyticsRequest,
    edges: Mapping[str, np.ndarray],
) -> dict[str, dict[str, Any]]:
    """Modeller side: merge every pod's partials into column -> statistic -> value.

    Values are JSON-able: ``count`` an int; ``sum``/``mean``/``var``/``std``/``min``/``max``
    floats (``None`` where undefined, e.g. ``var`` of fewer than two values);
    ``histogram`` ``{"edges": [...], "counts": [...]}``; ``quantiles`` ``{"0.25": v}``.

    Raises:
        AggregationError: there are no pod results.
        ProtocolError: a pod's partials do not match the request (columns, histogram
            bins, sketch, fields a requested statistic needs).
        SchemaMismatchError: pods found different numeric columns (all-columns requests).
        ConfigError: missing or unfit histogram edges.
    """
    if not partials_per_pod:
        raise AggregationError("no pod sent analytics results; nothing to combine")
    pods = sorted(partials_per_pod)
    plan = request.column_statistics()
    if not plan:
        found = [set(partials_per_pod[pod]) for pod in pods]
        uneven = sorted(found[0].union(*found[1:]) - found[0].intersection(*found[1:]))
        if uneven:
            raise SchemaMismatchError(
                f"numeric columns found on some pods but not all: {uneven[:20]}; "
                "name the columns to summarise"
            )
        plan = {column: request.statistics for column in partials_per_pod[pods[0]]}
    for pod in pods:
        if set(partials_per_pod[pod]) != set(plan):
            raise ProtocolError(
                f"pod {pod!r} sent columns {sorted(partials_per_pod[pod])}; expected {sorted(plan)}"
            )
    results: dict[str, dict[str, Any]] = {}
    for column, stats in plan.items():
        column_edges = _edges(column, request, edges) if "histogram" in stats else None
        bins = None if column_edges is None else len(column_edges) - 1
        for pod in pods:
            partial = partials_per_pod[pod][column]
            _check_pod(pod, column, partial, stats, bins=bins, accuracy=request.sketch_accuracy)
        merged = functools.reduce(merge_partials, (partials_per_pod[p][column] for p in pods))
        quantiles = request.quantiles if "quantiles" in stats else ()
        values = finalize(merged, edges=column_edges, quantiles=quantiles)
        results[column] = {stat: values[stat] for stat in stats}
    return results
