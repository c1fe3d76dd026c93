"""Tests for fedloom.algorithms.inference: predictions, usage limits, reports, images."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import safetensors.numpy
import torch
from PIL import Image
from torch import nn

from fedloom.algorithms.inference import (
    IMAGE_OUTPUTS,
    REPORT_COLUMNS,
    Predictions,
    apply_usage_limit,
    cut,
    load_approved_model,
    predict,
    report_rows,
    rows_from_body,
    rows_to_body,
    write_output_images,
    write_report_csv,
)
from fedloom.algorithms.ml import ModelSpec, build_model, state_to_arrays
from fedloom.errors import (
    AccessDeniedError,
    ConfigError,
    DataError,
    EmptyDatasetError,
    ProtocolError,
    SchemaMismatchError,
    UnknownNameError,
)

Array = npt.NDArray[Any]

MLP = ModelSpec("mlp", {"in_features": 4, "hidden": [8], "out_features": 3})


def mlp() -> nn.Module:
    return build_model(MLP, seed=7)


def features(n: int = 10, shape: tuple[int, ...] = (4,)) -> Array:
    return np.random.default_rng(0).normal(size=(n, *shape)).astype(np.float32)


def names(n: int) -> list[str]:
    return [f"img-{i:02d}.jpg" for i in range(n)]


def read_png(path: Path) -> Array:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image)


def make_predictions(n: int = 3) -> Predictions:
    return predict(mlp(), features(n), names(n))


# --- predict ----------------------------------------------------------------------------


def test_predict_softmax_rows_sum_to_one_and_argmax_matches_logits() -> None:
    model = mlp()
    x = features(10)
    result = predict(model, x, names(10), batch_size=3)
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    assert result.names == names(10)
    assert result.predicted.dtype == np.int64
    assert result.probabilities.dtype == np.float32
    assert result.probabilities.shape == (10, 3)
    np.testing.assert_allclose(result.probabilities.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(result.predicted, logits.argmax(axis=1))
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(result.probabilities, expected, rtol=1e-5)
    assert not result.probabilities.flags.writeable


def test_predict_restores_training_mode() -> None:
    model = mlp()
    model.train()
    predict(model, features(2), names(2))
    assert model.training


def test_predict_shape_mismatch_names_the_shapes() -> None:
    with pytest.raises(SchemaMismatchError, match=r"\(5,\)"):
        predict(mlp(), features(4, (5,)), names(4))


def test_predict_rejects_bad_inputs() -> None:
    with pytest.raises(EmptyDatasetError):
        predict(mlp(), np.zeros((0, 4), np.float32), [])
    with pytest.raises(DataError, match="file names"):
        predict(mlp(), features(3), names(2))
    bad = features(3)
    bad[1, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        predict(mlp(), bad, names(3))
    with pytest.raises(ConfigError, match="batch_size"):
        predict(mlp(), features(3), names(3), batch_size=0)
    with pytest.raises(ConfigError, match="unique"):
        predict(mlp(), features(2), ["a.jpg", "a.jpg"])


def test_predict_nan_outputs_are_a_data_error() -> None:
    model = mlp()
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(DataError, match="NaN or Inf"):
        predict(model, features(3), names(3))


# --- usage limits -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("used", "new", "limit", "allowed", "overrun", "exceeded"),
    [
        (10, 14, 20, 10, 4, True),
        (0, 5, 20, 5, 0, False),
        (15, 5, 20, 5, 0, True),
        (20, 3, 20, 0, 3, True),
        (25, 1, 20, 0, 1, True),
        (3, 0, 20, 0, 0, False),
        (10**6, 7, None, 7, 0, False),
    ],
)
def test_apply_usage_limit(
    used: int, new: int, limit: int | None, allowed: int, overrun: int, exceeded: bool
) -> None:
    result = apply_usage_limit(used, new, limit)
    assert (result.allowed, result.overrun, result.exceeded) == (allowed, overrun, exceeded)


@pytest.mark.parametrize(
    "args", [(-1, 1, 20), (0, -1, 20), (0, 1, -1), (True, 1, 20), (0, 1, False), (0, 1.0, 20)]
)
def test_apply_usage_limit_rejects_bad_counts(args: tuple[Any, Any, Any]) -> None:
    with pytest.raises(ConfigError):
        apply_usage_limit(*args)


def test_cut_keeps_the_first_rows() -> None:
    full = make_predictions(5)
    part = cut(full, 2)
    assert part.names == full.names[:2]
    np.testing.assert_array_equal(part.predicted, full.predicted[:2])
    np.testing.assert_array_equal(part.probabilities, full.probabilities[:2])
    assert len(cut(full, 0)) == 0
    with pytest.raises(ConfigError):
        cut(full, 6)


# --- report rows, CSV, body -------------------------------------------------------------


def test_report_rows_with_failures_are_ordered_by_file() -> None:
    predictions = Predictions(
        names=["c.jpg", "a.jpg"],
        predicted=np.array([1, 0]),
        probabilities=np.array([[0.25, 0.75], [0.1234567, 0.8765433]], np.float32),
    )
    rows = report_rows(predictions, {"b.jpg": "unreadable image"})
    assert [row["file"] for row in rows] == ["a.jpg", "b.jpg", "c.jpg"]
    assert rows[0] == {
        "file": "a.jpg",
        "prediction": "0",
        "probabilities": "[0.123457,0.876543]",
        "status": "ok",
    }
    assert rows[1] == {
        "file": "b.jpg",
        "prediction": "",
        "probabilities": "",
        "status": "failed: unreadable image",
    }
    assert json.loads(rows[2]["probabilities"]) == [0.25, 0.75]
    with pytest.raises(ConfigError, match="both"):
        report_rows(predictions, {"a.jpg": "x"})


def test_report_csv_round_trip_and_no_overwrite(tmp_path: Path) -> None:
    rows = report_rows(make_predictions(3), {'zé, "quoted".jpg': "bad\nheader"})
    path = write_report_csv(rows, tmp_path / "out" / "report.csv")
    with path.open(encoding="utf-8", newline="") as stream:
        reader = csv.DictReader(stream)
        assert tuple(reader.fieldnames or ()) == REPORT_COLUMNS
        assert list(reader) == rows
    with pytest.raises(ConfigError, match="already exists"):
        write_report_csv(rows[:1], path)
    assert len(path.read_text(encoding="utf-8").splitlines()) > 2  # unchanged
    write_report_csv(rows[:1], path, overwrite=True)
    with path.open(encoding="utf-8", newline="") as stream:
        assert list(csv.DictReader(stream)) == rows[:1]
    assert sorted(p.name for p in path.parent.iterdir()) == ["report.csv"]  # no temp files


def test_report_csv_rejects_malformed_rows(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        write_report_csv([{"file": "a"}], tmp_path / "r.csv")
    assert not (tmp_path / "r.csv").exists()


def test_body_round_trip() -> None:
    rows = report_rows(make_predictions(3), {"x.jpg": "timeout"})
    body = rows_to_body(rows)
    assert all(isinstance(item, list) and len(item) == 4 for item in body)
    assert rows_from_body(body) == rows
    assert rows_from_body([tuple(item) for item in body]) == rows


@pytest.mark.parametrize(
    "body",
    [
        {"rows": []},
        [["a.jpg", "1", "[0.5]"]],
        [["a.jpg", 1, "[0.5]", "ok"]],
        [["a.jpg", "one", "[0.5]", "ok"]],
        [["a.jpg", "1", "not json", "ok"]],
        [["a.jpg", "1", '["x"]', "ok"]],
        [["a.jpg", "1", "[NaN]", "ok"]],
        [["a.jpg", "1", "[0.5]", "done"]],
        [["a.jpg", "1", "", "failed: x"]],
        [["", "1", "[1.0]", "ok"]],
        [["a.jpg", "1", "[1.0]", "ok"], ["a.jpg", "0", "[1.0]", "ok"]],
    ],
)
def test_malformed_body_is_a_protocol_error(body: object) -> None:
    with pytest.raises(ProtocolError):
        rows_from_body(body)


# --- output images ----------------------------------------------------------------------


def test_overlay_images_are_pngs_named_after_inputs(tmp_path: Path) -> None:
    model = build_model(
        ModelSpec(
            "cnn",
            {"in_channels": 3, "image_size": 8, "channels": [2], "hidden": 4, "out_features": 3},
        ),
        seed=1,
    )
    rng = np.random.default_rng(1)
    images = rng.random((2, 3, 8, 8)).astype(np.float32)
    files = ["scans/a.jpg", "b.tif"]
    predictions = predict(model, images, files)
    paths = write_output_images(
        images, files, model, predictions, output="overlay", folder=tmp_path
    )
    assert paths == [tmp_path / "scans" / "a.png", tmp_path / "b.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert image.size == (8, 8)
            assert image.mode == "RGB"
    with pytest.raises(ConfigError, match="already exists"):
        write_output_images(images, files, model, predictions, output="overlay", folder=tmp_path)


def test_overlay_colour_depends_on_predicted_class(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    images = np.full((2, 4, 4), 0.5, np.float32)  # greyscale [n, H, W]
    predictions = Predictions(["a", "b"], np.array([0, 1]), np.full((2, 2), 0.5, np.float32))
    paths = write_output_images(
        images, ["a", "b"], model, predictions, output="overlay", folder=tmp_path
    )
    first, second = (read_png(path) for path in paths)
    assert first.shape == (4, 4, 3)
    assert not np.array_equal(first, second)


def test_mask_images_for_a_segmentation_model(tmp_path: Path) -> None:
    model = nn.Conv2d(1, 3, kernel_size=1)
    images = np.random.default_rng(2).random((2, 1, 5, 7)).astype(np.float32)
    files = ["m1.png", "m2.png"]
    predictions = predict(model, images, files)
    np.testing.assert_allclose(predictions.probabilities.sum(axis=1), 1.0, rtol=1e-6)
    paths = write_output_images(images, files, model, predictions, output="mask", folder=tmp_path)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).argmax(dim=1).numpy()
    for path, labels in zip(paths, expected, strict=True):
        pixels = read_png(path)
        assert pixels.shape == (5, 7, 3)
        np.testing.assert_array_equal(pixels[:, :, 0], np.rint(labels * 127.5).astype(np.uint8))


def test_mask_with_a_classifier_is_a_config_error(tmp_path: Path) -> None:
    model = mlp()
    images = np.random.default_rng(3).random((1, 2, 2)).astype(np.float32)
    predictions = Predictions(["a.jpg"], np.array([0]), np.ones((1, 3), np.float32) / 3)
    with pytest.raises(ConfigError, match="segmentation"):
        write_output_images(images, ["a.jpg"], model, predictions, output="mask", folder=tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "bad", ["../escape.jpg", "/etc/passwd", "a/../../b.jpg", "C:x.jpg", "a\\b"]
)
def test_unsafe_names_are_refused_before_writing(tmp_path: Path, bad: str) -> None:
    images = np.zeros((2, 4, 4), np.float32)
    files = ["fine.jpg", bad]
    predictions = Predictions(files, np.array([0, 1]), np.full((2, 2), 0.5, np.float32))
    with pytest.raises(ConfigError, match="safe relative path"):
        write_output_images(
            images, files, mlp(), predictions, output="overlay", folder=tmp_path / "out"
        )
    assert not (tmp_path / "out").exists()


def test_colliding_output_names_and_unknown_output(tmp_path: Path) -> None:
    images = np.zeros((2, 4, 4), np.float32)
    files = ["a.jpg", "a.tif"]
    predictions = Predictions(files, np.array([0, 1]), np.full((2, 2), 0.5, np.float32))
    with pytest.raises(ConfigError, match="both map"):
        write_output_images(images, files, mlp(), predictions, output="overlay", folder=tmp_path)
    with pytest.raises(UnknownNameError):
        write_output_images(images, files, mlp(), predictions, output="gradcam", folder=tmp_path)
    assert set(IMAGE_OUTPUTS.names()) >= {"mask", "overlay"}


# --- approved model files ---------------------------------------------------------------


def saved_model(tmp_path: Path) -> tuple[Path, str, nn.Module]:
    model = build_model(MLP, seed=3)
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors.numpy.save(state_to_arrays(model)))
    return path, hashlib.sha256(path.read_bytes()).hexdigest(), model


def test_approved_model_loads_its_weights(tmp_path: Path) -> None:
    path, digest, original = saved_model(tmp_path)
    loaded = load_approved_model(path, ["0" * 64, digest.upper()], MLP)
    x = torch.from_numpy(features(4))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), original(x))
    assert not loaded.training


def test_unapproved_model_is_refused_naming_its_hash(tmp_path: Path) -> None:
    path, digest, _ = saved_model(tmp_path)
    with pytest.raises(AccessDeniedError, match=digest):
        load_approved_model(path, ["0" * 64], MLP)
    with pytest.raises(ConfigError, match="64 hex"):
        load_approved_model(path, ["not-a-hash"], MLP)


def test_corrupted_model_file_is_refused(tmp_path: Path) -> None:
    path, digest, _ = saved_model(tmp_path)
    data = bytearray(path.read_bytes())
    data[3] ^= 0xFF  # inside the header length
    path.write_bytes(bytes(data))
    with pytest.raises(AccessDeniedError):
        load_approved_model(path, [digest], MLP)  # the approved hash no longer matches
    corrupted_digest = hashlib.sha256(bytes(data)).hexdigest()
    with pytest.raises(ConfigError, match="safetensors"):
        load_approved_model(path, [corrupted_digest], MLP)  # approved, but not loadable


def test_approved_file_for_another_model_does_not_fit(tmp_path: Path) -> None:
    path, digest, _ = saved_model(tmp_path)
    other = ModelSpec("mlp", {"in_features": 4, "hidden": [5], "out_features": 3})
    with pytest.raises(ConfigError, match="shape"):
        load_approved_model(path, [digest], other)
