"""Every datasource kind passes the Datasource suite; the suite catches broken ones."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fedloom.datasources import ArraySource, FileSource, TableSource
from fedloom.testing import DatasourceCase, check_datasource

FRAME = pd.DataFrame(
    {"age": [31.0, 45.0, np.nan, 52.0], "dose": [1, 2, 3, 4], "label": [0, 1, 1, 0]}
)


def _table_case(folder: Path, suffix: str) -> DatasourceCase:
    path = folder / f"data{suffix}"
    empty = folder / f"empty{suffix}"
    if suffix == ".csv":
        FRAME.to_csv(path, index=False)
        FRAME.head(0).to_csv(empty, index=False)
    else:
        FRAME.to_parquet(path)
        FRAME.head(0).to_parquet(empty)
    return DatasourceCase(
        make=lambda: TableSource(path, label_column="label"),
        missing=lambda: TableSource(folder / f"gone{suffix}", label_column="label"),
        empty=lambda: TableSource(empty, label_column="label"),
        missing_column=lambda: TableSource(path, label_column="outcome"),
    )


def _image_folder(root: Path, classes: bool) -> None:
    for index in range(4):
        where = root / f"class-{index % 2}" if classes else root
        where.mkdir(parents=True, exist_ok=True)
        pixels = np.full((2, 3, 3), index * 40, dtype=np.uint8)
        Image.fromarray(pixels).save(where / f"scan-{index}.png")


def _cases(folder: Path) -> dict[str, DatasourceCase]:
    (folder / "flat").mkdir()
    _image_folder(folder / "flat", classes=False)
    _image_folder(folder / "classes", classes=True)
    (folder / "nothing").mkdir()
    x = np.arange(24, dtype=np.float64).reshape(4, 2, 3)
    return {
        "csv": _table_case(folder, ".csv"),
        "parquet": _table_case(folder, ".parquet"),
        "frame": DatasourceCase(
            make=lambda: TableSource(FRAME, label_column="label"),
            empty=lambda: TableSource(FRAME.head(0), label_column="label"),
            missing_column=lambda: TableSource(FRAME, feature_columns=["age", "weight"]),
        ),
        "arrays": DatasourceCase(
            make=lambda: ArraySource(x, np.array([0, 1, 1, 0])),
            empty=lambda: ArraySource(x[:0]),
        ),
        "unlabelled arrays": DatasourceCase(make=lambda: ArraySource(x.reshape(4, -1))),
        "folder": DatasourceCase(
            make=lambda: FileSource(folder / "flat", pattern="*.png"),
            missing=lambda: FileSource(folder / "gone", pattern="*.png"),
            empty=lambda: FileSource(folder / "nothing", pattern="*.png"),
            may_start_empty=True,  # a drop folder: files arrive after the pod starts
        ),
        "class folders": DatasourceCase(
            make=lambda: FileSource(folder / "classes", recursive=True, label_from="parent"),
            missing=lambda: FileSource(folder / "gone", recursive=True, label_from="parent"),
        ),
    }


KINDS = ["csv", "parquet", "frame", "arrays", "unlabelled arrays", "folder", "class folders"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_datasource_kind_conforms(tmp_path: Path, kind: str) -> None:
    check_datasource(_cases(tmp_path)[kind])


def test_the_suite_catches_a_source_that_shares_its_cache() -> None:
    class SharesItsFrame(TableSource):
        def table(self) -> pd.DataFrame:
            return self._load()

    with pytest.raises(AssertionError, match="'table_is_safe_to_mutate' failed"):
        check_datasource(DatasourceCase(lambda: SharesItsFrame(FRAME, label_column="label")))


def test_the_suite_catches_a_source_whose_check_misses_a_missing_file(tmp_path: Path) -> None:
    class LazyCheck(TableSource):
        def check(self) -> None:
            """Looks at nothing."""

    case = DatasourceCase(
        make=lambda: LazyCheck(FRAME, label_column="label"),
        missing=lambda: LazyCheck(tmp_path / "gone.csv", label_column="label"),
    )
    with pytest.raises(AssertionError, match=r"'missing_data_is_typed'.*check\(\)"):
        check_datasource(case)


def test_the_suite_catches_a_miscounting_source() -> None:
    class CountsOneMore(ArraySource):
        def __len__(self) -> int:
            return super().__len__() + 1

    x = np.zeros((3, 2))
    with pytest.raises(AssertionError, match="'len_counts_the_rows_of_both_views'"):
        check_datasource(DatasourceCase(lambda: CountsOneMore(x)))
