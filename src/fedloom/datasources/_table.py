"""Tabular datasources: a CSV or Parquet file, or a DataFrame already in memory."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fedloom.datasources._base import Datasource, describe_frame, list_columns, require_column
from fedloom.errors import (
    ConfigError,
    DataError,
    DatasetNotFoundError,
    EmptyDatasetError,
    SchemaMismatchError,
)

FileFormat = Literal["csv", "parquet"]
_R = TypeVar("_R")

SUFFIX_FORMATS: dict[str, FileFormat] = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
"""File suffixes (lower-cased) that :class:`TableSource` recognises."""

CONFIG_KINDS: dict[str, FileFormat | None] = {"csv": "csv", "parquet": "parquet", "table": None}
"""Table ``kind`` values of :func:`datasource_from_config`; ``table`` picks the format by
suffix."""

DATASOURCE_KINDS = (*sorted(CONFIG_KINDS), "folder")
"""Every ``kind`` :func:`datasource_from_config` takes."""

_CONFIG_KEYS = frozenset({"kind", "path", "label_column", "feature_columns"})


class TableSource:
    """A table from a CSV/Parquet file or an in-memory DataFrame.

    The file is read on first use (``table()``, ``arrays()``, ``len()``, ``describe()``)
    and cached. Without ``feature_columns``, every column except the label is a feature.

    Raises:
        ConfigError: (at construction) unsupported suffix, or malformed column arguments.
        DatasetNotFoundError: (on first use) the file does not exist.
        EmptyDatasetError: (on first use) the table has no rows.
        DataError: (on first use) the file could not be read or parsed.
        MissingColumnError: (on first use) the label or a feature column is not present.
    """

    def __init__(
        self,
        path_or_frame: str | os.PathLike[str] | pd.DataFrame,
        *,
        label_column: str | None = None,
        feature_columns: Sequence[str] | None = None,
        file_format: FileFormat | None = None,
    ) -> None:
        self._label = label_column
        self._features = _check_columns(label_column, feature_columns)
        self._frame: pd.DataFrame | None = None
        self._source_frame: pd.DataFrame | None = None
        self._path: Path | None = None
        if isinstance(path_or_frame, pd.DataFrame):
            self._source_frame = path_or_frame.copy(deep=False)
            self._kind = "frame"
            return
        if not isinstance(path_or_frame, str | os.PathLike):
            raise ConfigError(
                f"TableSource needs a file path or a DataFrame, not {type(path_or_frame).__name__}"
            )
        self._path = Path(path_or_frame)
        if file_format is None:
            suffix = self._path.suffix.lower()
            if suffix not in SUFFIX_FORMATS:
                known = ", ".join(sorted(SUFFIX_FORMATS))
                raise ConfigError(
                    f"cannot tell the format of {self._path.name!r} from its suffix "
                    f"{suffix or '(none)'!r}; use one of {known}"
                )
            file_format = SUFFIX_FORMATS[suffix]
        elif file_format not in ("csv", "parquet"):
            raise ConfigError(f"file_format must be 'csv' or 'parquet', not {file_format!r}")
        self._kind = file_format

    def _load(self) -> pd.DataFrame:
        if self._frame is not None:
            return self._frame
        frame = self._source_frame if self._source_frame is not None else self._read()
        if len(frame) == 0:
            raise EmptyDatasetError(f"the {self._where()} has no rows")
        if not all(isinstance(c, str) for c in frame.columns):
            frame = frame.rename(columns=str)  # column names are strings everywhere else
        features = self._features
        if features is None:
            features = tuple(str(c) for c in frame.columns if c != self._label)
        for column in features:
            require_column(frame, column, "feature")
        if self._label is not None:
            require_column(frame, self._label, "label")
        chosen = [*features, self._label] if self._label is not None else list(features)
        self._frame = frame[chosen]
        self._features = features
        return self._frame

    def _read(self) -> pd.DataFrame:
        if self._kind == "csv":
            return self._reading(pd.read_csv)
        return self._reading(lambda path: pd.read_parquet(path, engine="pyarrow"))

    def _reading(self, read: Callable[[Path], _R]) -> _R:
        """``read(path)``, with the file's problems as typed errors."""
        assert self._path is not None  # only called for file sources
        if not self._path.exists():
            raise DatasetNotFoundError(
                f"no such data file: {str(self._path)!r}", public="no such data file"
            )
        try:
            return read(self._path)
        except pd.errors.EmptyDataError as exc:
            raise EmptyDatasetError(f"the {self._where()} is empty: {exc}") from exc
        except FileNotFoundError as exc:
            raise DatasetNotFoundError(
                f"no such data file: {str(self._path)!r}", public="no such data file"
            ) from exc
        except (ValueError, OSError, pa.ArrowException) as exc:
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise DataError(f"could not read the {self._where()}: {detail}") from exc

    def _head(self) -> tuple[list[str], bool]:
        """The column names, and whether there is a row; nothing more is read.

        A CSV file's header and first row, a Parquet file's footer (schema and row count).
        """
        if self._source_frame is not None:
            return [str(c) for c in self._source_frame.columns], len(self._source_frame) > 0
        if self._kind == "csv":
            head = self._reading(lambda path: pd.read_csv(path, nrows=1))
            return [str(c) for c in head.columns], len(head) > 0
        metadata = self._reading(pq.read_metadata)
        return list(metadata.schema.to_arrow_schema().names), metadata.num_rows > 0

    def check(self) -> None:
        """Check that the table can be used, reading only what that needs (see ``_head``).

        The file exists and can be read, it has a row, and its label and feature columns.

        Raises:
            DatasetNotFoundError: the file does not exist.
            EmptyDatasetError: the table has no rows.
            DataError: the file could not be read or parsed.
            MissingColumnError: the label or a feature column is not present.
        """
        if self._frame is not None:  # loaded, and checked then
            return
        columns, has_rows = self._head()
        if not has_rows:
            raise EmptyDatasetError(f"the {self._where()} has no rows")
        header = pd.DataFrame(columns=columns)
        for column in self._features or ():
            require_column(header, column, "feature")
        if self._label is not None:
            require_column(header, self._label, "label")

    def _where(self) -> str:
        if self._path is None:
            return "DataFrame"
        return f"{self._kind} file {self._path.name!r}"

    @property
    def label_column(self) -> str | None:
        """The label column, or ``None`` for an unlabelled table."""
        return self._label

    @property
    def feature_columns(self) -> tuple[str, ...]:
        """The feature columns (this loads the table when they were not given)."""
        self._load()
        assert self._features is not None
        return tuple(self._features)

    def table(self) -> pd.DataFrame:
        """The features then the label column; a (copy-on-write) copy of the cache."""
        return self._load().copy(deep=False)

    def arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``x`` float32 of shape ``(rows, features)``; ``y`` int64 or ``None``.

        Missing feature values become NaN.

        Raises:
            SchemaMismatchError: a feature column is not numeric, or the label column does
                not hold whole numbers without gaps.
        """
        frame = self._load()
        features = list(self.feature_columns)
        bad = [c for c in features if not pd.api.types.is_numeric_dtype(frame[c])]
        if bad:
            detail = ", ".join(f"{c!r} ({frame[c].dtype})" for c in bad[:20])
            raise SchemaMismatchError(
                f"feature columns must be numeric for arrays(); not numeric: {detail}. "
                "Encode them first or leave them out with feature_columns=..."
            )
        x = frame[features].to_numpy(dtype=np.float32, na_value=np.nan)
        y = None if self._label is None else _labels(frame[self._label], self._label)
        return x, y

    def __len__(self) -> int:
        return len(self._load())

    def describe(self) -> dict[str, Any]:
        """``kind`` (csv, parquet or frame), ``rows``, ``columns``, and the column roles."""
        summary = describe_frame(self._kind, self._load())
        summary["label_column"] = self._label
        summary["feature_columns"] = list(self.feature_columns)
        return summary

    def __repr__(self) -> str:
        return f"TableSource({self._where()}, label_column={self._label!r})"


def _check_columns(label: str | None, features: Sequence[str] | None) -> tuple[str, ...] | None:
    if label is not None and (not isinstance(label, str) or not label):
        raise ConfigError(f"label_column must be a non-empty string, not {label!r}")
    if features is None:
        return None
    if isinstance(features, str) or not all(isinstance(c, str) and c for c in features):
        raise ConfigError("feature_columns must be a list of non-empty column names")
    chosen = tuple(features)
    if not chosen:
        raise ConfigError("feature_columns is empty; leave it out to use every column")
    if len(set(chosen)) != len(chosen):
        raise ConfigError(f"feature_columns lists a column twice: {list_columns(chosen)}")
    if label is not None and label in chosen:
        raise ConfigError(f"the label column {label!r} cannot also be a feature column")
    return chosen


def _labels(series: pd.Series, name: str) -> np.ndarray:
    """The label column as int64, or SchemaMismatchError if it is not whole numbers."""
    if series.isna().any():
        raise SchemaMismatchError(f"label column {name!r} has missing values")
    if pd.api.types.is_bool_dtype(series) or pd.api.types.is_integer_dtype(series):
        return series.to_numpy(dtype=np.int64)
    if pd.api.types.is_float_dtype(series):
        values = series.to_numpy(dtype=np.float64)
        if np.all(np.isfinite(values)) and np.all(values == np.round(values)):
            return values.astype(np.int64)
    raise SchemaMismatchError(
        f"label column {name!r} ({series.dtype}) must hold whole-number class labels "
        "for arrays(); encode the labels as integers first"
    )


def datasource_from_config(config: Mapping[str, Any]) -> Datasource:
    """Build a datasource from JSON config.

    ``{"kind": "csv" | "parquet" | "table", "path": "...", "label_column": "y",
    "feature_columns": ["a", "b"]}``; ``table`` picks the reader from the file suffix.
    ``{"kind": "folder", "path": "...", "pattern": "*.png", "recursive": false,
    "loader": "image", "loader_options": {"size": [64, 64]}, "batch_size": 32,
    "label_from": "parent"}``: a folder of files, one data point each (all but ``kind`` and
    ``path`` optional).

    Raises:
        ConfigError: unknown kind or key, a missing path, or a value of the wrong type.
    """
    if not isinstance(config, Mapping):
        raise ConfigError(f"a datasource config must be a mapping, not {type(config).__name__}")
    kind = config.get("kind")
    if kind == "folder":
        return _folder_from_config(config)
    if kind not in CONFIG_KINDS:  # before the keys, which depend on the kind
        raise ConfigError(
            f"unknown datasource kind {kind!r}; known kinds: {', '.join(DATASOURCE_KINDS)}"
        )
    unknown = sorted(str(k) for k in config if k not in _CONFIG_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown datasource config keys {unknown}; allowed: {sorted(_CONFIG_KEYS)}"
        )
    path = config.get("path")
    if not isinstance(path, str) or not path:
        raise ConfigError(f"datasource kind {kind!r} needs 'path': a non-empty string")
    label = config.get("label_column")
    features = config.get("feature_columns")
    if features is not None and not isinstance(features, list | tuple):
        raise ConfigError("'feature_columns' must be a list of column names")
    return TableSource(
        path, label_column=label, feature_columns=features, file_format=CONFIG_KINDS[kind]
    )


_FOLDER_KEYS = frozenset(
    {"kind", "path", "pattern", "recursive", "loader", "loader_options", "batch_size", "label_from"}
)


def _folder_from_config(config: Mapping[str, Any]) -> Datasource:
    from fedloom.datasources._files import FileSource

    unknown = sorted(str(k) for k in config if k not in _FOLDER_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown folder datasource keys {unknown}; allowed: {sorted(_FOLDER_KEYS)}"
        )
    path = config.get("path")
    if not isinstance(path, str) or not path:
        raise ConfigError("datasource kind 'folder' needs 'path': a non-empty string")
    options = config.get("loader_options", {})
    if not isinstance(options, Mapping):
        raise ConfigError("'loader_options' must be a table of options")
    recursive = config.get("recursive", False)
    if not isinstance(recursive, bool):
        raise ConfigError("'recursive' must be true or false")
    return FileSource(
        path,
        pattern=str(config.get("pattern", "*")),
        recursive=recursive,
        loader=str(config.get("loader", "image")),
        loader_options=dict(options),
        batch_size=config.get("batch_size", 32),
        label_from=config.get("label_from"),
    )
