"""The image loader's ``channels_first`` option and the built-in CNN's input layouts.

The ``image`` loader gives ``(h, w, c)`` by default, torch's convolutions take ``(c, h, w)``:
the loader can give either, and the ``cnn`` model takes either when that is unambiguous,
with the parameters and state_dict keys it always had.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from fedloom.algorithms.inference import predict
from fedloom.algorithms.ml import ModelSpec, build_model
from fedloom.algorithms.ml._rng import seeded
from fedloom.datasources import FileSource
from fedloom.errors import ConfigError, SchemaMismatchError

CNN = {"in_channels": 3, "image_size": 8, "channels": [4, 6], "hidden": 8, "out_features": 2}


def _cnn(**changes: Any) -> nn.Module:
    return build_model(ModelSpec("cnn", {**CNN, **changes}), seed=3)


@pytest.fixture
def rgb(tmp_path: Path) -> Path:
    pixels = np.random.default_rng(0).integers(0, 256, size=(3, 5, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    return tmp_path


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_the_image_loader_gives_channels_first_on_request(rgb: Path, mode: str) -> None:
    (record,) = FileSource(rgb, loader_options={"mode": mode}).files()
    last = FileSource(rgb, loader_options={"mode": mode}).load(record)
    first = FileSource(rgb, loader_options={"mode": mode, "channels_first": True}).load(record)
    channels = 3 if mode == "RGB" else 1
    assert last.shape == (3, 5, channels) and first.shape == (channels, 3, 5)
    assert first.dtype == np.float32 and first.flags.c_contiguous
    np.testing.assert_array_equal(first, last.transpose(2, 0, 1))
    off = FileSource(rgb, loader_options={"channels_first": False}).load(record)
    np.testing.assert_array_equal(off, FileSource(rgb).load(record))


@pytest.mark.parametrize("value", ["yes", 1, None, [True]])
def test_channels_first_must_be_a_bool(rgb: Path, value: object) -> None:
    with pytest.raises(ConfigError, match="channels_first must be true or false"):
        FileSource(rgb, loader_options={"channels_first": value})
    with pytest.raises(ConfigError, match=r"known: \['channels_first', 'mode', 'size'\]"):
        FileSource(rgb, loader_options={"channel_first": True})


def test_the_cnn_keeps_its_parameters_and_state_dict_keys() -> None:
    """Built under the same seed, the layers are those of the plain nn.Sequential it was."""
    with seeded(3, torch.device("cpu"), exclusive=True):
        plain = nn.Sequential(
            nn.Conv2d(3, 4, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 6, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(6 * 2 * 2, 8),
            nn.ReLU(),
            nn.Linear(8, 2),
        )
    model = _cnn()
    assert isinstance(model, nn.Sequential)
    assert list(model.state_dict()) == list(plain.state_dict())
    for key, tensor in plain.state_dict().items():
        assert torch.equal(model.state_dict()[key], tensor), key
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(model(x), plain(x))
    model.load_state_dict(plain.state_dict())  # checkpoints of the plain model load


def test_the_cnn_takes_channels_last_images_when_unambiguous() -> None:
    model = _cnn()
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(model(x.permute(0, 2, 3, 1)), model(x))
    torch.testing.assert_close(model(torch.rand(2, 3, 9, 9)).shape, torch.Size([2, 2]))
    # in_channels == image_size: axis 1 decides, as it always did
    square = _cnn(in_channels=8, channels=[4])
    y = torch.rand(1, 8, 8, 8)
    torch.testing.assert_close(square(y), nn.Sequential(*square)(y))
    assert model[:3](x).shape == (2, 4, 4, 4)  # a slice runs its layers as they are


@pytest.mark.parametrize("shape", [(2, 5, 8, 8), (2, 8, 8, 5), (2, 3, 16, 16), (3, 8, 8)])
def test_an_image_of_neither_layout_names_both_shapes(shape: tuple[int, ...]) -> None:
    expected = r"\(N, 3, 8, 8\) \(channels first\) or \(N, 8, 8, 3\) \(channels last\)"
    with pytest.raises(SchemaMismatchError, match=expected + re.escape(f", got {shape}")):
        _cnn()(torch.rand(*shape))
    if len(shape) == 4:
        inputs = np.zeros(shape, dtype=np.float32)
        with pytest.raises(SchemaMismatchError, match=expected):
            predict(_cnn(), inputs, [f"f{i}" for i in range(shape[0])])


def test_predict_runs_the_cnn_on_what_the_image_loader_gives(tmp_path: Path) -> None:
    for i in range(2):
        Image.fromarray(np.full((8, 8, 3), 60 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    outputs = []
    for first in (False, True):
        source = FileSource(tmp_path, loader_options={"channels_first": first})
        x, _ = source.arrays()
        outputs.append(predict(_cnn(), x, ["0.png", "1.png"]).probabilities)
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-6)
