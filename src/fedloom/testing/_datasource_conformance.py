"""Conformance suite for the :class:`~fedloom.datasources.Datasource` contract.

``check_datasource(case)`` runs every check on sources the :class:`DatasourceCase` makes:
``make`` a fresh source over the same data each call (at least two rows); ``missing``,
``empty`` and ``missing_column`` (each optional, None where the kind cannot be in that
state) a source whose data does not exist, has no rows, or lacks a configured column;
``may_start_empty`` for a kind whose data may be empty when the pod starts (a drop folder
that files arrive in): its ``check()`` passes and ``table()`` has no rows, while ``len()``
and ``arrays()`` still raise EmptyDatasetError.
A broken rule raises AssertionError naming the check::

    check_datasource(DatasourceCase(lambda: MySource(path), missing=lambda: MySource(gone)))
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from fedloom.datasources import Datasource
from fedloom.datasources import check_usable as look_before_use
from fedloom.errors import DatasetNotFoundError, EmptyDatasetError, MissingColumnError

__all__ = ["DatasourceCase", "check_datasource"]

SourceMaker = Callable[[], Datasource]


@dataclass(frozen=True)
class DatasourceCase:
    """How to make the sources one implementation is checked on."""

    make: SourceMaker
    missing: SourceMaker | None = None
    empty: SourceMaker | None = None
    missing_column: SourceMaker | None = None
    may_start_empty: bool = False


def _expect(condition: bool, message: str) -> None:
    if not condition:  # not assert: kept under python -O
        raise AssertionError(message)


def _is_a_datasource(case: DatasourceCase) -> None:
    _expect(isinstance(case.make(), Datasource), "does not implement the Datasource methods")


def _len_counts_the_rows_of_both_views(case: DatasourceCase) -> None:
    source = case.make()
    rows = len(source)
    _expect(rows >= 2, f"the case must have at least two rows, has {rows}")
    frame = source.table()
    x, y = source.arrays()
    _expect(len(frame) == rows, f"table() has {len(frame)} rows, len() says {rows}")
    _expect(x.shape[0] == rows, f"arrays() x has {x.shape[0]} samples, len() says {rows}")
    _expect(y is None or y.shape == (rows,), f"y has shape {None if y is None else y.shape}")
    _expect(len(source) == rows, "len() changed between calls")


def _arrays_have_the_promised_types(case: DatasourceCase) -> None:
    x, y = case.make().arrays()
    _expect(isinstance(x, np.ndarray) and x.dtype == np.float32, f"x is not float32: {x.dtype}")
    _expect(x.ndim >= 2, f"x must have samples on the first axis and features, shape {x.shape}")
    if y is not None:
        _expect(y.dtype == np.int64 and y.ndim == 1, f"y is not int64 1-D: {y.dtype} {y.shape}")


def _the_label_column_comes_last_and_matches_y(case: DatasourceCase) -> None:
    source = case.make()
    frame = source.table()
    _, y = source.arrays()
    if y is None:
        return
    last = frame[frame.columns[-1]].to_numpy()
    _expect(np.array_equal(last, y), "the table's last column is not the labels of arrays()")


def _describe_is_json_and_agrees(case: DatasourceCase) -> None:
    source = case.make()
    summary = source.describe()
    try:
        json.dumps(summary)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"describe() is not JSON-able: {exc}") from exc
    _expect(isinstance(summary.get("kind"), str), "describe() has no 'kind'")
    _expect(summary.get("rows") == len(source), f"describe() rows {summary.get('rows')!r}")
    columns = {str(name): str(dtype) for name, dtype in source.table().dtypes.items()}
    _expect(summary.get("columns") == columns, f"describe() columns {summary.get('columns')}")


def _table_is_safe_to_mutate(case: DatasourceCase) -> None:
    source = case.make()
    before = source.table().copy(deep=True)
    frame = source.table()
    first = frame.columns[0]
    frame.loc[frame.index[0], first] = frame.loc[frame.index[1], first]
    frame[frame.columns[0]] = frame[frame.columns[0]].iloc[::-1].to_numpy()
    del frame[frame.columns[-1]]
    pd.testing.assert_frame_equal(source.table(), before, obj="table() after a change")


def _reads_are_deterministic(case: DatasourceCase) -> None:
    first, second = case.make(), case.make()
    pd.testing.assert_frame_equal(first.table(), second.table(), obj="two sources' tables")
    pd.testing.assert_frame_equal(first.table(), first.table(), obj="two calls' tables")
    for x, y in (first.arrays(), second.arrays()):
        x0, y0 = first.arrays()
        _expect(np.array_equal(x, x0, equal_nan=True), "arrays() x differs between reads")
        _expect((y is None) == (y0 is None), "arrays() y differs between reads")
        _expect(y is None or y0 is None or np.array_equal(y, y0), "arrays() y differs")


def _check_passes_on_good_data(case: DatasourceCase) -> None:
    look_before_use(case.make())


def _raises(
    maker: SourceMaker, error: type[Exception], what: str, *, only_when_read: bool = False
) -> None:
    try:
        source = maker()
    except error:
        return  # found at construction (in-memory data is checked when given)
    uses: list[tuple[str, Callable[[], object]]] = [
        ("len()", lambda: len(source)),
        ("arrays()", source.arrays),
    ]
    if only_when_read:
        look_before_use(source)
        _expect(len(source.table()) == 0, f"table() on {what} has rows")
    else:
        uses += [("check()", lambda: look_before_use(source)), ("table()", source.table)]
    for name, use in uses:
        try:
            use()
        except error:
            continue
        except Exception as exc:
            raise AssertionError(
                f"{name} on {what} raised {type(exc).__name__}, not {error.__name__}: {exc}"
            ) from exc
        raise AssertionError(f"{name} on {what} must raise {error.__name__}")


def _missing_data_is_typed(case: DatasourceCase) -> None:
    if case.missing is not None:
        try:
            source = case.missing()
        except Exception as exc:
            raise AssertionError(f"construction touched the disk: {exc!r}") from exc
        _raises(lambda: source, DatasetNotFoundError, "missing data")


def _empty_data_is_typed(case: DatasourceCase) -> None:
    if case.empty is not None:
        _raises(case.empty, EmptyDatasetError, "empty data", only_when_read=case.may_start_empty)


def _missing_column_is_typed(case: DatasourceCase) -> None:
    if case.missing_column is not None:
        _raises(case.missing_column, MissingColumnError, "a missing column")


CHECKS: tuple[Callable[[DatasourceCase], None], ...] = (
    _is_a_datasource,
    _len_counts_the_rows_of_both_views,
    _arrays_have_the_promised_types,
    _the_label_column_comes_last_and_matches_y,
    _describe_is_json_and_agrees,
    _table_is_safe_to_mutate,
    _reads_are_deterministic,
    _check_passes_on_good_data,
    _missing_data_is_typed,
    _empty_data_is_typed,
    _missing_column_is_typed,
)


def check_datasource(case: DatasourceCase) -> None:
    """Run every Datasource contract check on sources from ``case``.

    Raises:
        AssertionError: naming the first check that failed.
    """
    for check in CHECKS:
        name = check.__name__.strip("_")
        try:
            check(case)
        except AssertionError as exc:
            raise AssertionError(f"datasource check {name!r} failed: {exc}") from exc
        except Exception as exc:
            raise AssertionError(
                f"datasource check {name!r} raised {type(exc).__name__}: {exc}"
            ) from exc
