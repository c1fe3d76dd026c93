"""Tests for fedloom.datasources: TableSource, ArraySource and datasource_from_config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedloom.datasources import (
    ArraySource,
    Datasource,
    TableSource,
    datasource_from_config,
)
from fedloom.errors import (
    ConfigError,
    DataError,
    DatasetNotFoundError,
    EmptyDatasetError,
    MissingColumnError,
    SchemaMismatchError,
)


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "age": [30, 41, 52, 63],
            "weight": [70.5, 80.0, np.nan, 65.25],
            "city": ["a", "b", "c", "d"],
            "y": [0, 1, 1, 0],
        }
    )


@pytest.fixture
def csv_file(tmp_path: Path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    return path


@pytest.fixture
def parquet_file(tmp_path: Path, frame: pd.DataFrame) -> Path:
    path = tmp_path / "data.parquet"
    frame.to_parquet(path, engine="pyarrow", index=False)
    return path


# --- TableSource -------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["csv_file", "parquet_file"])
def test_table_source_reads_files(which: str, request: pytest.FixtureRequest) -> None:
    path = request.getfixturevalue(which)
    source = TableSource(path, label_column="y", feature_columns=["age", "weight"])
    assert isinstance(source, Datasource)
    assert len(source) == 4
    table = source.table()
    assert list(table.columns) == ["age", "weight", "y"]
    x, y = source.arrays()
    assert x.dtype == np.float32 and x.shape == (4, 2)
    assert np.isnan(x[2, 1])
    assert y is not None and y.dtype == np.int64
    np.testing.assert_array_equal(y, [0, 1, 1, 0])


def test_table_source_from_frame_uses_every_other_column_as_features(
    frame: pd.DataFrame,
) -> None:
    source = TableSource(frame, label_column="y")
    assert source.feature_columns == ("age", "weight", "city")
    assert list(source.table().columns) == ["age", "weight", "city", "y"]


def test_non_string_column_names_become_strings() -> None:
    source = TableSource(pd.DataFrame({0: [1.0, 2.0], 1: [0, 1]}), label_column="1")
    assert source.feature_columns == ("0",)
    assert list(source.table().columns) == ["0", "1"]


def test_table_is_cached_and_safe_to_mutate(csv_file: Path) -> None:
    source = TableSource(csv_file)
    first = source.table()
    first["age"] = -1
    csv_file.unlink()  # a second read would fail: the cache must answer
    assert source.table()["age"].tolist() == [30, 41, 52, 63]


def test_table_source_loads_lazily(tmp_path: Path) -> None:
    source = TableSource(tmp_path / "later.csv")  # no error until used
    with pytest.raises(DatasetNotFoundError, match=r"later\.csv"):
        len(source)


def test_unlabelled_source_has_no_y(frame: pd.DataFrame) -> None:
    x, y = TableSource(frame, feature_columns=["age"]).arrays()
    assert y is None and x.shape == (4, 1)


def test_unsupported_suffix_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.xlsx"):
        TableSource(tmp_path / "data.xlsx")
    with pytest.raises(ConfigError, match="suffix"):
        TableSource(tmp_path / "data")


def test_missing_file_is_dataset_not_found(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError):
        TableSource(tmp_path / "nope.parquet").table()


def test_zero_rows_is_empty_dataset(tmp_path: Path) -> None:
    header_only = tmp_path / "header.csv"
    header_only.write_text("a,b\n")
    with pytest.raises(EmptyDatasetError):
        TableSource(header_only).table()
    blank = tmp_path / "blank.csv"
    blank.write_text("")
    with pytest.raises(EmptyDatasetError):
        len(TableSource(blank))
    with pytest.raises(EmptyDatasetError):
        TableSource(pd.DataFrame({"a": []})).arrays()


def test_malformed_files_are_data_errors(tmp_path: Path) -> None:
    bad_parquet = tmp_path / "bad.parquet"
    bad_parquet.write_bytes(b"this is not parquet")
    with pytest.raises(DataError) as info:
        TableSource(bad_parquet).table()
    assert info.value.__cause__ is not None
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text('a,b\n1,2\n"unterminated,3\n')
    with pytest.raises(DataError):
        TableSource(bad_csv).table()


def test_missing_label_column_names_it_and_lists_columns(frame: pd.DataFrame) -> None:
    with pytest.raises(MissingColumnError) as info:
        TableSource(frame, label_column="target").table()
    text = str(info.value)
    assert "'target'" in text and "'age'" in text and "'city'" in text


def test_missing_feature_column(frame: pd.DataFrame) -> None:
    with pytest.raises(MissingColumnError, match="'height'"):
        TableSource(frame, feature_columns=["age", "height"]).arrays()


@pytest.mark.parametrize(
    ("label", "features"),
    [
        ("", None),
        ("y", []),
        ("y", ["age", "age"]),
        ("y", ["age", "y"]),
        (None, "age"),
    ],
)
def test_bad_column_arguments_are_config_errors(
    frame: pd.DataFrame, label: str | None, features: object
) -> None:
    with pytest.raises(ConfigError):
        TableSource(frame, label_column=label, feature_columns=features)  # type: ignore[arg-type]


def test_non_numeric_feature_is_schema_mismatch(frame: pd.DataFrame) -> None:
    source = TableSource(frame, label_column="y")
    assert len(source.table()) == 4  # the table view is fine
    with pytest.raises(SchemaMismatchError, match="'city'"):
        source.arrays()


@pytest.mark.parametrize("labels", [["a", "b", "a", "b"], [0.5, 1.0, 0.0, 1.0], [0, 1, None, 1]])
def test_bad_labels_are_schema_mismatch(frame: pd.DataFrame, labels: list[Any]) -> None:
    frame = frame.assign(y=labels)
    with pytest.raises(SchemaMismatchError, match="'y'"):
        TableSource(frame, label_column="y", feature_columns=["age"]).arrays()


def test_whole_float_labels_become_int64(frame: pd.DataFrame) -> None:
    frame = frame.assign(y=[0.0, 2.0, 1.0, 2.0])
    _, y = TableSource(frame, label_column="y", feature_columns=["age"]).arrays()
    assert y is not None and y.dtype == np.int64 and y.tolist() == [0, 2, 1, 2]


def test_describe_is_json_able(parquet_file: Path) -> None:
    summary = TableSource(parquet_file, label_column="y").describe()
    json.dumps(summary)
    assert summary["kind"] == "parquet"
    assert summary["rows"] == 4
    assert set(summary["columns"]) == {"age", "weight", "city", "y"}
    assert summary["columns"]["age"] == "int64"
    assert summary["label_column"] == "y"


# --- ArraySource -------------------------------------------------------------------------


def test_array_source_round_trip() -> None:
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    y = np.array([1, 0, 1, 1])
    source = ArraySource(x, y, feature_names=["a", "b", "c"], label_name="target")
    assert isinstance(source, Datasource)
    assert len(source) == 4
    xs, ys = source.arrays()
    assert xs.dtype == np.float32 and ys is not None and ys.dtype == np.int64
    np.testing.assert_array_equal(xs, x)
    table = source.table()
    assert list(table.columns) == ["a", "b", "c", "target"]
    assert table["target"].tolist() == [1, 0, 1, 1]
    summary = source.describe()
    json.dumps(summary)
    assert summary["kind"] == "arrays" and summary["rows"] == 4
    assert summary["columns"]["target"] == "int64"


def test_array_source_flattens_images_in_table_only() -> None:
    x = np.zeros((5, 2, 2, 3), dtype=np.uint8)
    source = ArraySource(x)
    assert source.arrays()[0].shape == (5, 2, 2, 3)
    assert source.arrays()[1] is None
    table = source.table()
    assert table.shape == (5, 12)
    assert list(table.columns)[:2] == ["f0", "f1"] and table.columns[-1] == "f11"


def test_array_source_avoids_copies_for_float32() -> None:
    x = np.ones((3, 2), dtype=np.float32)
    assert ArraySource(x).arrays()[0] is x


@pytest.mark.parametrize(
    ("x", "y", "kwargs"),
    [
        (np.arange(4.0), None, {}),
        (np.array([["a"], ["b"]]), None, {}),
        (np.ones((3, 2)), np.array([0, 1]), {}),
        (np.ones((3, 2)), np.zeros((3, 1)), {}),
        (np.ones((3, 2)), np.array([0.5, 1.0, 0.0]), {}),
        (np.ones((3, 2)), None, {"feature_names": ["a"]}),
        (np.ones((3, 2)), None, {"feature_names": ["a", "a"]}),
        (np.ones((3, 2)), np.array([0, 1, 0]), {"feature_names": ["a", "label"]}),
    ],
)
def test_array_source_rejects_bad_shapes(
    x: np.ndarray, y: np.ndarray | None, kwargs: dict[str, object]
) -> None:
    with pytest.raises(ConfigError):
        ArraySource(x, y, **kwargs)  # type: ignore[arg-type]


def test_array_source_empty_is_empty_dataset() -> None:
    with pytest.raises(EmptyDatasetError):
        ArraySource(np.zeros((0, 3)))


# --- datasource_from_config --------------------------------------------------------------


def test_from_config_builds_table_sources(csv_file: Path, parquet_file: Path) -> None:
    source = datasource_from_config(
        {"kind": "table", "path": str(csv_file), "label_column": "y", "feature_columns": ["age"]}
    )
    assert isinstance(source, TableSource)
    assert source.describe()["kind"] == "csv"
    assert source.arrays()[0].shape == (4, 1)
    assert len(datasource_from_config({"kind": "parquet", "path": str(parquet_file)})) == 4


def test_from_config_kind_overrides_suffix(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "export.txt"
    frame.to_csv(path, index=False)
    assert len(datasource_from_config({"kind": "csv", "path": str(path)})) == 4


@pytest.mark.parametrize(
    "config",
    [
        {"kind": "excel", "path": "a.xlsx"},
        {"path": "a.csv"},
        {"kind": "csv"},
        {"kind": "csv", "path": 3},
        {"kind": "csv", "path": "a.csv", "colour": "red"},
        {"kind": "csv", "path": "a.csv", "feature_columns": "age"},
        {"kind": "csv", "path": "a.csv", "label_column": 7},
    ],
)
def test_from_config_rejects_bad_config(config: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        datasource_from_config(config)
