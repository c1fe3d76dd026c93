"""The datasource contract: how a pod (or a virtual client) reads its data.

A datasource offers two views of the same rows: a :class:`pandas.DataFrame` for analytics
and preprocessing, and ``(x, y)`` numpy arrays for training. Implementations load lazily
and cache, so constructing one is cheap and never touches the disk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from fedloom.errors import MissingColumnError

MAX_LISTED_COLUMNS = 20
"""How many column names an error message lists before it says "and N more"."""


@runtime_checkable
class Datasource(Protocol):
    """What every datasource offers.

    Constraints:
        * ``table()`` and ``arrays()`` describe the same rows in the same order, and
          ``len(source)`` is their number.
        * Results are safe to mutate: changing a returned frame never changes the source.

    A datasource may also offer ``check()``: a cheap look (a file's header, a folder's
    existence) that raises the errors of this list a first use would, without loading
    the data; :func:`check_usable` calls it. The built-in sources all have one.

    Raises:
        DatasetNotFoundError: the file behind the source does not exist.
        EmptyDatasetError: the source has no rows.
        DataError: the data could not be read (malformed file, ...).
        MissingColumnError: a configured label or feature column is not in the data.
        SchemaMismatchError: ``arrays()`` was asked for non-numeric features or labels.
    """

    def table(self) -> pd.DataFrame:
        """The tabular view: the feature columns, then the label column if there is one."""
        ...

    def arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """``(x, y)`` for training.

        ``x`` is float32 with samples on the first axis (2-D for tabular data); ``y`` is
        int64 1-D, or ``None`` when the source has no labels.
        """
        ...

    def __len__(self) -> int:
        """The number of rows (samples)."""
        ...

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary: ``kind``, ``rows`` and ``columns`` (name -> dtype string)."""
        ...


def check_usable(source: Datasource) -> None:
    """Check that ``source`` can be used, without loading it.

    Runs its ``check()`` if it has one (a pod runs this for each dataset before it goes
    online); others pass.

    Raises:
        DataError: (a subclass of it) what the first use of the source would raise.
    """
    check = getattr(source, "check", None)
    if callable(check):
        check()


def list_columns(columns: Sequence[object]) -> str:
    """Column names for an error message, bounded to :data:`MAX_LISTED_COLUMNS`."""
    names = [str(name) for name in columns]
    shown = ", ".join(repr(name) for name in names[:MAX_LISTED_COLUMNS])
    extra = len(names) - MAX_LISTED_COLUMNS
    if extra > 0:
        shown += f" and {extra} more"
    return shown or "none"


def require_column(frame: pd.DataFrame, column: str, role: str) -> None:
    """Raise :class:`MissingColumnError` unless ``frame`` has ``column``.

    Raises:
        MissingColumnError: naming the column, its role, and the columns present.
    """
    if column not in frame.columns:
        raise MissingColumnError(
            f"{role} column {column!r} is not in the dataset; "
            f"columns present: {list_columns(list(frame.columns))}"
        )


def describe_frame(kind: str, frame: pd.DataFrame) -> dict[str, Any]:
    """The JSON-able ``describe()`` dict shared by the implementations."""
    return {
        "kind": kind,
        "rows": len(frame),
        "columns": {str(name): str(dtype) for name, dtype in frame.dtypes.items()},
    }
