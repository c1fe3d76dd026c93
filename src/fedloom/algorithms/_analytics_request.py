"""What a modeller may ask of federated analytics: the validated :class:`AnalyticsRequest`."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from fedloom.errors import ConfigError

STATISTIC_NAMES = ("count", "sum", "mean", "var", "std", "min", "max", "histogram", "quantiles")
SCHEMA_TYPES = ("numeric", "integer", "float", "string")
DEFAULT_QUANTILES = (0.25, 0.5, 0.75)
DEFAULT_HISTOGRAM_BINS = 10
DEFAULT_SKETCH_ACCURACY = 0.01
MAX_HISTOGRAM_BINS = 10_000


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


def check_count(value: object, what: str, low: int, high: int | None) -> int:
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
        check_count(self.histogram_bins, "histogram_bins", 1, MAX_HISTOGRAM_BINS)
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
            check_count(self.min_rows, "min_rows", 0, None)
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
