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
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import pandas as pd

from fedloom.algorithms.statistics import (
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

STATISTIC_NAMES = ("count", "sum", "mean", "var", "std", "min", "max", "histogram", "quantiles")
SCHEMA_TYPES = ("numeric", "integer", "float", "string")
DEFAULT_QUANTILES = (0.25, 0.5, 0.75)
DEFAULT_HISTOGRAM_BINS = 10
DEFAULT_SKETCH_ACCURACY = 0.01
MAX_HISTOGRAM_BINS = 10_000

__all__ = [
    "STATISTIC_NAMES", "AnalyticsRequest", "column_ranges", "combine", "compute_partials",
    "edges_from_ranges", "partials_from_wire", "partials_to_wire",
]  # fmt: skip


def _names(value: object, what: str, allowed: tuple[str, ...] | None = None) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise ConfigError(f"{what} must be a list of names, not {value!r}")
    for name in value:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{what} must hold non-empty strings, not {name!r}")
        if allowed is not None and name not in allowed:
            raise ConfigError(f"unknown statistic {name!r} in {what}; known: {', '.join(allowed)}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{what} lists a name twice: {list(value)}")
    return tuple(value)


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number, not {value!r}")
    return float(value)


def _count(value: object, what: str, low: int, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{what} must be an int >= {low}, not {value!r}")
    if high is not None and value > high:
        raise ConfigError(f"{what} must be at most {high}, not {value}")
    return value


def _mapping(value: object, what: str) -> Mapping[object, object]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a mapping, not {type(value).__name__}")
    return value


@dataclass(frozen=True)
class AnalyticsRequest:
    """Which statistics of which columns a modeller asks the pods for.

    Give either ``statistics`` (applied to ``columns``, or to every numeric column when
    ``columns`` is empty) or ``per_column`` (column -> statistic names), not both. Lists
    are accepted and stored as tuples. A ``histogram`` needs named columns; a histogram
    column without a ``histogram_range`` gets shared edges from a min/max pre-round.

    Raises:
        ConfigError: an unknown statistic, a value of the wrong type or out of range, both
            or neither of ``statistics``/``per_column``, a bad quantile, ``histogram_bins``
            outside 1..MAX_HISTOGRAM_BINS, or a range/schema entry that does not fit.
    """

    statistics: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    per_column: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES
    histogram_bins: int = DEFAULT_HISTOGRAM_BINS
    histogram_range: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    schema: Mapping[str, str] | None = None
    min_rows: int | None = None
    sketch_accuracy: float = DEFAULT_SKETCH_ACCURACY

    def __post_init__(self) -> None:
        fix = functools.partial(object.__setattr__, self)
        fix("statistics", _names(self.statistics, "statistics", STATISTIC_NAMES))
        fix("columns", _names(self.columns, "columns"))
        per_column = _mapping(self.per_column, "per_column")
        _names(list(per_column), "per_column keys")
        fix("per_column", {
            str(c): _names(s, f"per_column[{c!r}]", STATISTIC_NAMES) for c, s in per_column.items()
        })  # fmt: skip
        if bool(self.statistics) == bool(self.per_column):
            raise ConfigError("give either 'statistics' or 'per_column' (one, not both)")
        if self.per_column and self.columns:
            raise ConfigError("'columns' goes with 'statistics'; per_column names its own")
        if "histogram" in self.statistics and not self.columns:
            raise ConfigError("a histogram needs named columns: set 'columns' or per_column")
        if isinstance(self.quantiles, str) or not isinstance(self.quantiles, list | tuple):
            raise ConfigError(f"quantiles must be a list of numbers, not {self.quantiles!r}")
        fix("quantiles", tuple(_number(q, "a quantile") for q in self.quantiles))
        if not all(0 <= q <= 1 for q in self.quantiles) or len(set(self.quantiles)) != len(
            self.quantiles
        ):
            raise ConfigError(f"quantiles must be distinct numbers in [0, 1]: {self.quantiles}")
        wanted = {s for stats in self.column_statistics().values() for s in stats}
        if "quantiles" in wanted | set(self.statistics) and not self.quantiles:
            raise ConfigError("'quantiles' was requested but the quantiles list is empty")
        _count(self.histogram_bins, "histogram_bins", 1, MAX_HISTOGRAM_BINS)
        ranges: dict[str, tuple[float, float]] = {}
        for column, pair in _mapping(self.histogram_range, "histogram_range").items():
            if "histogram" not in self.column_statistics().get(str(column), ()):
                raise ConfigError(f"histogram_range names {column!r}, which gets no histogram")
            if isinstance(pair, str) or not isinstance(pair, list | tuple) or len(pair) != 2:
                raise ConfigError(f"histogram_range[{column!r}] must be [low, high]")
            low, high = (_number(v, f"histogram_range[{column!r}]") for v in pair)
            if not low < high:
                raise ConfigError(f"histogram_range[{column!r}] needs low < high")
            ranges[str(column)] = (low, high)
        fix("histogram_range", ranges)
        if self.schema is not None:
            schema = _mapping(self.schema, "schema")
            if not all(isinstance(c, str) and t in SCHEMA_TYPES for c, t in schema.items()):
                raise ConfigError(f"schema must map column names to one of {SCHEMA_TYPES}")
            fix("schema", dict(schema))
        if self.min_rows is not None:
            _count(self.min_rows, "min_rows", 0, None)
        fix("sketch_accuracy", _number(self.sketch_accuracy, "sketch_accuracy"))
        if not 0 < self.sketch_accuracy < 1:
            raise ConfigError(f"sketch_accuracy must be in (0, 1), not {self.sketch_accuracy}")

    def column_statistics(self) -> dict[str, tuple[str, ...]]:
        """Named column -> its statistics; empty when every numeric column is meant."""
        if self.per_column:
            return dict(self.per_column)
        return {column: self.statistics for column in self.columns}

    def columns_needing_edges(self) -> list[str]:
        """Histogram columns without a ``histogram_range``: a min/max pre-round is needed."""
        return [
            column
            for column, stats in self.column_statistics().items()
            if "histogram" in stats and column not in self.histogram_range
        ]

    def to_config(self) -> dict[str, Any]:
        """A JSON-able dict that :meth:`from_config` turns back into an equal request."""
        return {
            "statistics": list(self.statistics),
            "columns": list(self.columns),
            "per_column": {c: list(s) for c, s in self.per_column.items()},
            "quantiles": list(self.quantiles),
            "histogram_bins": self.histogram_bins,
            "histogram_range": {c: list(r) for c, r in self.histogram_range.items()},
            "schema": None if self.schema is None else dict(self.schema),
            "min_rows": self.min_rows,
            "sketch_accuracy": self.sketch_accuracy,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> AnalyticsRequest:
        """Rebuild a request from :meth:`to_config` output, validating every value.

        Raises:
            ConfigError: ``config`` is not a mapping, has unknown keys, or any value is bad.
        """
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(map(str, set(_mapping(config, "an analytics request")) - set(allowed)))
        if unknown:
            raise ConfigError(f"unknown analytics request keys {unknown}; allowed: {allowed}")
        return cls(**{str(key): value for key, value in config.items()})


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
    _count(min_rows, "min_rows", 0, None)
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
    _count(bins, "bins", 1, MAX_HISTOGRAM_BINS)
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
