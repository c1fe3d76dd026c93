"""A datasource over numpy arrays already in memory (simulation, tests, small demos)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from fedloom.datasources._base import describe_frame
from fedloom.errors import ConfigError, EmptyDatasetError


class ArraySource:
    """Samples ``x`` (first axis = samples) and optional integer labels ``y``.

    ``arrays()`` keeps the sample shape of ``x`` (an image set stays ``(n, h, w, c)``) and
    avoids copies where the dtype already fits, so partitions of a large array stay cheap.
    ``table()`` flattens each sample into columns named ``feature_names`` or
    ``f0 .. f{k-1}``, followed by the ``label_name`` column when there are labels.

    Raises:
        ConfigError: ``x`` is not numeric or has fewer than two axes; ``y`` is not 1-D,
            not whole numbers, or not as long as ``x``; ``feature_names`` does not fit.
        EmptyDatasetError: ``x`` has no samples.
    """

    def __init__(
        self,
        x: np.ndarray,
        y: np.ndarray | None = None,
        *,
        feature_names: Sequence[str] | None = None,
        label_name: str = "label",
    ) -> None:
        x = np.asarray(x)
        if x.ndim < 2:
            raise ConfigError(
                f"x must have a samples axis and a feature axis (2-D or more), got shape "
                f"{x.shape}; reshape 1-D data with x.reshape(-1, 1)"
            )
        if not (np.issubdtype(x.dtype, np.number) or x.dtype == np.bool_) or np.iscomplexobj(x):
            raise ConfigError(f"x must hold real numbers, not {x.dtype}")
        if x.shape[0] == 0:
            raise EmptyDatasetError("the arrays have no samples (x.shape[0] == 0)")
        self._x = x
        self._y = None if y is None else _check_labels(np.asarray(y), len(x))
        width = int(np.prod(x.shape[1:]))
        if feature_names is None:
            names = tuple(f"f{i}" for i in range(width))
        else:
            if isinstance(feature_names, str):
                raise ConfigError("feature_names must be a list of names, not one string")
            names = tuple(str(n) for n in feature_names)
            if len(names) != width:
                raise ConfigError(
                    f"feature_names has {len(names)} names but each sample has {width} values"
                )
            if len(set(names)) != len(names):
                raise ConfigError("feature_names lists a name twice")
        if not isinstance(label_name, str) or not label_name:
            raise ConfigError("label_name must be a non-empty string")
        if self._y is not None and label_name in names:
            raise ConfigError(f"label_name {label_name!r} is also a feature name")
        self._names = names
        self._label = label_name

    @property
    def feature_names(self) -> tuple[str, ...]:
        """The column names ``table()`` gives the flattened features."""
        return self._names

    def table(self) -> pd.DataFrame:
        """The flattened samples as columns, then the label column if there are labels."""
        flat = self._x.reshape(len(self._x), -1)
        frame = pd.DataFrame(flat, columns=list(self._names))
        if self._y is not None:
            frame[self._label] = self._y
        return frame

    def arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``x`` as float32 in its own shape, ``y`` as int64 (or ``None``)."""
        return self._x.astype(np.float32, copy=False), self._y

    def __len__(self) -> int:
        return len(self._x)

    def check(self) -> None:
        """Nothing to check: the arrays are in memory and were checked when given."""

    def describe(self) -> dict[str, Any]:
        """``kind`` (arrays), ``rows``, ``columns`` and the sample ``shape``."""
        head = ArraySource(
            self._x[:1],
            None if self._y is None else self._y[:1],
            feature_names=self._names,
            label_name=self._label,
        )
        summary = describe_frame("arrays", head.table())
        summary["rows"] = len(self._x)
        summary["shape"] = [int(n) for n in self._x.shape[1:]]
        summary["label_column"] = self._label if self._y is not None else None
        return summary

    def __repr__(self) -> str:
        labelled = "labelled" if self._y is not None else "unlabelled"
        return f"ArraySource({len(self._x)} samples of shape {self._x.shape[1:]}, {labelled})"


def _check_labels(y: np.ndarray, rows: int) -> np.ndarray:
    if y.ndim != 1:
        raise ConfigError(f"y must be 1-D, got shape {y.shape}")
    if len(y) != rows:
        raise ConfigError(f"y has {len(y)} labels but x has {rows} samples")
    if np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_:
        return y.astype(np.int64, copy=False)
    floating = np.issubdtype(y.dtype, np.floating)
    if floating and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
        return y.astype(np.int64)
    raise ConfigError(f"y must hold whole-number class labels, got {y.dtype} values")
