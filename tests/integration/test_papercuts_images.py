"""A folder of PNGs on a pod, the ``image`` loader and the built-in ``cnn``: inference works
with the loader's default layout and with ``channels_first``, and when every file fails the
modeller hears the first file's reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fedloom import LocalFederation, ModelSpec
from fedloom.datasources import datasource_from_config
from fedloom.protocols import BatchedInference

from .conftest import until_idle

CNN = {"in_channels": 3, "image_size": 8, "channels": [4], "hidden": 8, "out_features": 2}
SCANS = [f"scan-{i:03d}.png" for i in range(1, 4)]


def _scans(folder: Path) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in SCANS:
        Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(folder / name)


async def _run(folder: Path, task: BatchedInference, outputs: Path | None, **options: Any) -> Any:
    # the pod's [datasets.scans] table: kind = "folder" with the image loader
    source = datasource_from_config(
        {
            "kind": "folder",
            "path": str(folder),
            "pattern": "*.png",
            "loader": "image",
            "loader_options": options,
        }
    )
    async with LocalFederation({"pod-a": {"default": source}}) as federation:
        federation.pods["pod-a"].outputs = outputs
        run = await federation.run(task)
        await until_idle(federation.pods["pod-a"])
        return run


@pytest.mark.parametrize("channels_first", [False, True], ids=["hwc", "chw"])
@pytest.mark.async_timeout(120)
async def test_the_builtin_cnn_predicts_every_png_of_a_folder(
    tmp_path: Path, channels_first: bool
) -> None:
    _scans(tmp_path / "scans")
    outputs = tmp_path / "outputs"
    task = BatchedInference(ModelSpec("cnn", CNN), batch_size=2, output_images="overlay")
    options = {"channels_first": True} if channels_first else {}  # default: (h, w, c)
    run = await _run(tmp_path / "scans", task, outputs, **options)
    assert run.aborted == {}
    rows = run.result.rows["pod-a"]
    assert [row["file"] for row in rows] == SCANS
    assert all(row["status"] == "ok" for row in rows), rows
    assert run.result.failures["pod-a"] == []
    for name in SCANS:  # the overlays show the images as they are, in either layout
        with Image.open(outputs / run.task_id / "images" / name) as image:
            assert image.size == (8, 8)


@pytest.mark.async_timeout(120)
async def test_when_every_file_fails_the_modeller_hears_the_first_reason(tmp_path: Path) -> None:
    _scans(tmp_path / "scans")
    grey = ModelSpec("cnn", {**CNN, "in_channels": 1})  # the images are RGB
    run = await _run(tmp_path / "scans", BatchedInference(grey, batch_size=2), None)
    assert run.result.rows == {}
    message = run.aborted["pod-a"].message
    assert message.startswith(
        "no batch and no file could be processed; first failure: scan-001.png: "
        "the cnn model takes images of shape (N, 1, 8, 8) (channels first) or (N, 8, 8, 1) "
        "(channels last), got (1, 8, 8, 3)"
    ), message
