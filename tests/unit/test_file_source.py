"""Tests for fedloom.datasources.FileSource: a folder of files, each file one data point."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fedloom.datasources import LOADERS, Datasource, FileRecord, FileSource
from fedloom.errors import (
    ConfigError,
    DataError,
    DatasetNotFoundError,
    EmptyDatasetError,
    SchemaMismatchError,
    UnknownNameError,
)


def write_image(
    path: Path, size: tuple[int, int] = (4, 6), color: int = 200, fmt: str = "PNG"
) -> None:
    """Write an RGB image of (height, width) ``size`` filled with ``color``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size[1], size[0]), (color, color // 2, 0)).save(path, format=fmt)


def png_bytes(size: tuple[int, int] = (4, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size[1], size[0]), (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def names(source: FileSource) -> list[str]:
    return [record.name for record in source.files()]


@pytest.fixture
def images(tmp_path: Path) -> Path:
    folder = tmp_path / "scans"
    for name in ["b.png", "a.png", "c.jpg"]:
        write_image(folder / name, fmt="JPEG" if name.endswith(".jpg") else "PNG")
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(png_bytes())
    write_image(folder / "sub" / "z.png")
    write_image(folder / "sub" / "a.png")
    write_image(folder / ".cache" / "x.png")
    return folder


# --- listing ---------------------------------------------------------------------------


def test_lists_sorted_and_skips_hidden_files_and_folders(images: Path) -> None:
    assert names(FileSource(images)) == ["a.png", "b.png", "c.jpg", "notes.txt"]
    assert names(FileSource(images, recursive=True)) == [
        "a.png",
        "b.png",
        "c.jpg",
        "notes.txt",
        "sub/a.png",
        "sub/z.png",
    ]


def test_pattern_filters_by_name_and_by_sub_folder(images: Path) -> None:
    assert names(FileSource(images, pattern="*.png")) == ["a.png", "b.png"]
    assert names(FileSource(images, pattern="*.png", recursive=True)) == [
        "a.png",
        "b.png",
        "sub/a.png",
        "sub/z.png",
    ]
    assert names(FileSource(images, pattern="sub/*.png", recursive=True)) == [
        "sub/a.png",
        "sub/z.png",
    ]
    assert names(FileSource(images, pattern="*.PNG")) == []  # case-sensitive


def test_symlinks_inside_are_kept_and_outside_or_broken_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    write_image(folder / "real.png")
    outside = tmp_path / "secret.png"
    write_image(outside)
    (folder / "inside.png").symlink_to(folder / "real.png")
    (folder / "escape.png").symlink_to(outside)
    (folder / "broken.png").symlink_to(folder / "missing.png")
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    source = FileSource(folder, recursive=True)
    assert names(source) == ["inside.png", "real.png"]
    linked = next(source.files())
    assert linked.path == folder.resolve() / "inside.png"
    assert linked.size == (folder / "real.png").stat().st_size


def test_file_record_fields_and_mtime_change(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    target = folder / "one.bin"
    target.write_bytes(b"12345")
    os.utime(target, ns=(1_000_000_000, 1_000_000_000))
    (record,) = FileSource(folder, loader="bytes").files()
    assert record == FileRecord(folder.resolve() / "one.bin", "one.bin", 5, 1_000_000_000)
    assert record.path.is_absolute()
    target.write_bytes(b"123456")
    os.utime(target, ns=(2_000_000_000, 2_000_000_000))
    (changed,) = FileSource(folder, loader="bytes").files()
    assert (changed.size, changed.mtime_ns) == (6, 2_000_000_000)
    assert changed != record


def test_files_yields_nothing_for_no_match_but_len_and_arrays_raise(images: Path) -> None:
    source = FileSource(images, pattern="*.tiff")
    assert list(source.files()) == []
    assert list(source.batches()) == []
    with pytest.raises(EmptyDatasetError, match=r"\*\.tiff"):
        len(source)
    with pytest.raises(EmptyDatasetError):
        source.arrays()


# --- batches and the background count ----------------------------------------------------


def make_files(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"f{i:03d}.bin").write_bytes(bytes([i % 256]))


def test_batches_have_the_configured_size(tmp_path: Path) -> None:
    make_files(tmp_path / "d", 10)
    source = FileSource(tmp_path / "d", loader="bytes", batch_size=4)
    assert [len(batch) for batch in source.batches()] == [4, 4, 2]
    assert [len(batch) for batch in source.batches(batch_size=5)] == [5, 5]
    records = list(source.files())[:3]
    assert list(source.batches(records, batch_size=2)) == [records[:2], records[2:]]
    flat = [record.name for batch in source.batches() for record in batch]
    assert flat == names(source)


def test_background_count_matches_len_while_batches_run(tmp_path: Path) -> None:
    make_files(tmp_path / "d", 50)
    source = FileSource(tmp_path / "d", loader="bytes", batch_size=8)
    count = source.count_in_background()
    seen = 0
    for batch in source.batches():
        loaded, failed = source.load_batch(batch)
        assert not failed
        seen += len(loaded)
    assert count.result(timeout=30) == seen == len(source) == 50
    assert count.done()


async def test_background_count_can_be_awaited(tmp_path: Path) -> None:
    make_files(tmp_path / "d", 3)
    source = FileSource(tmp_path / "d", loader="bytes")
    assert await asyncio.wrap_future(source.count_in_background().future) == 3


def test_background_count_reports_a_missing_folder_at_once(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError):
        FileSource(tmp_path / "nope").count_in_background()


# --- loaders -----------------------------------------------------------------------------


def test_image_loads_as_float_hwc_with_resize_and_mode(images: Path) -> None:
    plain = FileSource(images, pattern="a.png")
    (value,) = [plain.load(r) for r in plain.files()]
    assert value.dtype == np.float32 and value.shape == (4, 6, 3)
    assert value.min() >= 0.0 and value.max() <= 1.0
    np.testing.assert_allclose(value[0, 0], [200 / 255, 100 / 255, 0.0], atol=1e-6)
    resized = FileSource(images, pattern="*.jpg", loader_options={"size": [8, 5], "mode": "L"})
    (gray,) = [resized.load(r) for r in resized.files()]
    assert gray.shape == (8, 5, 1) and gray.dtype == np.float32


@pytest.mark.parametrize(
    "content",
    [b"\x89PNG not really" + bytes(range(64)), png_bytes()[:40]],
    ids=["random-bytes", "truncated-png"],
)
def test_corrupt_image_is_a_data_error_naming_the_file(tmp_path: Path, content: bytes) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "bad.png").write_bytes(content)
    source = FileSource(folder)
    (record,) = source.files()
    with pytest.raises(DataError, match=r"'bad\.png'") as caught:
        source.load(record)
    assert type(caught.value) is DataError
    assert str(tmp_path) not in str(caught.value)  # only the relative name


def test_load_batch_splits_good_and_bad_files(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    write_image(folder / "a.png")
    (folder / "b.png").write_bytes(os.urandom(100))
    write_image(folder / "c.png")
    source = FileSource(folder)
    loaded, failed = source.load_batch(list(source.files()))
    assert [record.name for record, _ in loaded] == ["a.png", "c.png"]
    assert list(failed) == ["b.png"] and isinstance(failed["b.png"], DataError)
    assert source.stack([value for _, value in loaded]).shape == (2, 4, 6, 3)


def test_stack_shape_mismatch_names_the_shapes(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    write_image(folder / "a.png", size=(4, 6))
    write_image(folder / "b.png", size=(5, 6))
    source = FileSource(folder)
    values = [source.load(r) for r in source.files()]
    with pytest.raises(SchemaMismatchError, match=r"\(4, 6, 3\).*\(5, 6, 3\)"):
        source.stack(values)
    with pytest.raises(SchemaMismatchError):
        source.arrays()
    x, y = FileSource(folder, loader_options={"size": [3, 3]}).arrays()
    assert x.shape == (2, 3, 3, 3) and y is None


def test_bytes_loader_and_bytes_cannot_stack(tmp_path: Path) -> None:
    make_files(tmp_path / "d", 2)
    source = FileSource(tmp_path / "d", loader="bytes")
    values = [source.load(r) for r in source.files()]
    assert values == [b"\x00", b"\x01"]
    with pytest.raises(SchemaMismatchError, match="bytes"):
        source.stack(values)
    with pytest.raises(EmptyDatasetError):
        source.stack([])


def test_table_loader_reads_one_row_per_file(tmp_path: Path) -> None:
    folder = tmp_path / "rows"
    folder.mkdir()
    pd.DataFrame({"a": [1], "b": [2.5]}).to_csv(folder / "r1.csv", index=False)
    pd.DataFrame({"a": [3], "b": [4.5]}).to_parquet(folder / "r2.parquet")
    (folder / "r3.csv").write_text("")
    source = FileSource(folder, loader="table")
    loaded, failed = source.load_batch(list(source.files()))
    assert [value for _, value in loaded] == [{"a": 1, "b": 2.5}, {"a": 3, "b": 4.5}]
    assert list(failed) == ["r3.csv"]
    stacked = source.stack([value for _, value in loaded])
    np.testing.assert_array_equal(stacked, np.array([[1, 2.5], [3, 4.5]], dtype=np.float32))
    with pytest.raises(SchemaMismatchError, match="columns"):
        source.stack([{"a": 1}, {"b": 2}])


def test_plugin_loader_registered_by_name(tmp_path: Path) -> None:
    name = "test-line-count"
    if name not in LOADERS:

        @LOADERS.register(name)
        def count_lines(path: Path, options: Mapping[str, Any]) -> np.ndarray:
            text = path.read_text()
            if "boom" in text:
                raise RuntimeError("exploded")
            return np.array([text.count("\n") * options.get("scale", 1)], dtype=np.float32)

    folder = tmp_path / "txt"
    folder.mkdir()
    (folder / "a.txt").write_text("1\n2\n")
    (folder / "b.txt").write_text("boom")
    source = FileSource(folder, loader=name, loader_options={"scale": 10})
    loaded, failed = source.load_batch(list(source.files()))
    assert [float(v[0]) for _, v in loaded] == [20.0]
    assert "exploded" in str(failed["b.txt"]) and "'b.txt'" in str(failed["b.txt"])


# --- labels and the Datasource protocol ------------------------------------------------------


@pytest.fixture
def classes(tmp_path: Path) -> Path:
    folder = tmp_path / "pets"
    write_image(folder / "dog" / "d1.png")
    write_image(folder / "cat" / "c1.png")
    write_image(folder / "cat" / "c2.png")
    (folder / "bird").mkdir()
    return folder


def test_labels_from_parent_folder(classes: Path) -> None:
    source = FileSource(classes, recursive=True, label_from="parent")
    assert source.classes == ["bird", "cat", "dog"]
    records = list(source.files())
    assert [r.name for r in records] == ["cat/c1.png", "cat/c2.png", "dog/d1.png"]
    labels = source.labels(records)
    assert labels is not None and labels.tolist() == [1, 1, 2]
    x, y = source.arrays()
    assert x.shape == (3, 4, 6, 3) and y is not None and y.tolist() == [1, 1, 2]
    assert source.table()["label"].tolist() == [1, 1, 2]
    assert FileSource(classes, recursive=True).labels(records) is None


def test_label_for_a_file_outside_class_folders_is_an_error(classes: Path) -> None:
    write_image(classes / "stray.png")
    source = FileSource(classes, recursive=True, label_from="parent")
    with pytest.raises(SchemaMismatchError, match=r"stray\.png"):
        source.labels(list(source.files()))


def test_protocol_views_and_describe_hides_the_absolute_path(classes: Path) -> None:
    source = FileSource(classes, pattern="*.png", recursive=True, label_from="parent")
    assert isinstance(source, Datasource)
    assert len(source) == 3
    frame = source.table()
    assert list(frame.columns) == ["name", "size", "mtime_ns", "label"]
    assert frame["name"].tolist() == ["cat/c1.png", "cat/c2.png", "dog/d1.png"]
    summary = source.describe()
    assert summary["kind"] == "folder" and summary["folder"] == "pets"
    assert summary["count"] == summary["rows"] == 3
    assert summary["pattern"] == "*.png" and summary["loader"] == "image"
    assert str(classes.parent) not in repr(summary) and str(classes.parent) not in repr(source)


# --- bad arguments -------------------------------------------------------------------------


def test_missing_folder_or_a_file_is_dataset_not_found(tmp_path: Path) -> None:
    source = FileSource(tmp_path / "absent")  # construction does not touch the disk
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        source.files()
    (tmp_path / "plain").write_text("x")
    with pytest.raises(DatasetNotFoundError, match="not a folder"):
        len(FileSource(tmp_path / "plain"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"batch_size": 2.0},
        {"batch_size": True},
        {"pattern": ""},
        {"pattern": "/etc/*"},
        {"pattern": "../*.png"},
        {"pattern": "a/../*.png", "recursive": True},
        {"pattern": "sub/*.png"},
        {"pattern": 3},
        {"label_from": "grandparent", "recursive": True},
        {"label_from": "parent"},
        {"loader_options": {"size": [0, 4]}},
        {"loader_options": {"size": [4]}},
        {"loader_options": {"mode": "CMYK"}},
        {"loader_options": {"colour": "red"}},
        {"loader": "bytes", "loader_options": {"size": [2, 2]}},
        {"loader_options": ["size"]},
    ],
)
def test_bad_arguments_are_config_errors(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        FileSource(tmp_path, **kwargs)


def test_bad_batch_size_override_and_unknown_loader(tmp_path: Path) -> None:
    source = FileSource(tmp_path)
    with pytest.raises(ConfigError):
        source.batches(batch_size=-1)
    with pytest.raises(UnknownNameError):
        FileSource(tmp_path, loader="no-such-loader")
    with pytest.raises(UnknownNameError):
        FileSource(tmp_path, loader="os.system")
