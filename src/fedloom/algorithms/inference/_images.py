"""Output images: one PNG per input, made by a registered :data:`IMAGE_OUTPUTS` function.

:func:`write_output_images` checks every input's output path, calls the chosen function
(built in: ``overlay`` for classifiers, ``mask`` for segmentation models) and writes
each image atomically.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import torch
from PIL import Image
from torch import nn

from fedloom._registry import Registry
from fedloom.algorithms.inference._predictions import Array, PredictionRow, Predictions
from fedloom.algorithms.inference._report import _write_atomically
from fedloom.errors import ConfigError, DataError

__all__ = ["IMAGE_OUTPUTS", "ImageContext", "ImageOutput", "write_output_images"]


@dataclass(frozen=True, eq=False)
class ImageContext:
    """What an :data:`ImageOutput` function gets for one input.

    ``image`` is the input for display (``H x W x C`` float in ``[0, 1]``), ``model_input``
    the same input as the model takes it (no batch axis), ``row`` its prediction.
    """

    image: Array
    model_input: Array
    model: nn.Module
    row: PredictionRow


ImageOutput = Callable[[ImageContext], Array]
"""Makes one output image (``H x W x 3`` uint8) for one input."""

IMAGE_OUTPUTS: Registry[ImageOutput] = Registry("image output")

# Distinct, colour-blind-friendly colours (Okabe-Ito); classes beyond them cycle.
_CLASS_COLOURS = np.array(
    [
        [230, 159, 0],
        [86, 180, 233],
        [0, 158, 115],
        [240, 228, 66],
        [0, 114, 178],
        [213, 94, 0],
        [204, 121, 167],
        [0, 0, 0],
    ],
    dtype=np.float64,
)
OVERLAY_ALPHA = 0.4


def _to_uint8(image: Array) -> Array:
    return np.asarray(np.clip(np.rint(image * 255.0), 0, 255), dtype=np.uint8)


@IMAGE_OUTPUTS.register("overlay")
def overlay(context: ImageContext) -> Array:
    """The input tinted with the predicted class's colour (40 % opacity).

    A simple, deterministic class-colour overlay that shows the prediction at a glance;
    it is not a class-activation map (not Grad-CAM): it says nothing about *where* the
    model looked.
    """
    image = context.image
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] != 3 else image
    colour = _CLASS_COLOURS[context.row.predicted % len(_CLASS_COLOURS)] / 255.0
    return _to_uint8((1.0 - OVERLAY_ALPHA) * rgb + OVERLAY_ALPHA * colour)


@IMAGE_OUTPUTS.register("mask")
def mask(context: ImageContext) -> Array:
    """Greyscale per-pixel argmax of a segmentation model (``[n, classes, H, W]`` output).

    Class ``k`` of ``C`` is drawn as grey level ``round(255 * k / (C - 1))``.

    Raises:
        ConfigError: the model does not return per-pixel ``[n, classes, H, W]`` logits
            (for example a classifier).
    """
    model = context.model
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    dtype = parameter.dtype if parameter is not None else torch.float32
    features = torch.from_numpy(np.array(context.model_input[None], order="C"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(features.to(device=device, dtype=dtype))
    finally:
        model.train(was_training)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 4:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else None
        raise ConfigError(
            f"image output 'mask' needs a segmentation model returning [n, classes, H, W]; "
            f"this model returns {shape}; use 'overlay' for classifiers"
        )
    classes = int(logits.shape[1])
    labels = logits[0].argmax(dim=0).cpu().numpy().astype(np.float64)
    grey = _to_uint8(labels / max(classes - 1, 1))
    return np.repeat(grey[:, :, None], 3, axis=2)


def _display_image(model_input: Array) -> Array:
    """``H x W x C`` float in [0, 1] from a ``C x H x W`` or ``H x W`` input."""
    image = model_input.transpose(1, 2, 0) if model_input.ndim == 3 else model_input[:, :, None]
    image = image.astype(np.float64)
    low, high = float(image.min()), float(image.max())
    if low < 0.0 or high > 1.0:  # normalised inputs: stretch to [0, 1] for display
        image = (image - low) / (high - low) if high > low else np.zeros_like(image)
    if image.shape[2] not in (1, 3):
        image = image.mean(axis=2, keepdims=True)
    return image


def _output_relpath(name: str) -> PurePosixPath:
    """The output image path for input file ``name`` (relative, ``.png``), or ConfigError."""
    if (
        not isinstance(name, str)
        or not name
        or "\x00" in name
        or "\\" in name
        or PurePosixPath(name).is_absolute()
        or PureWindowsPath(name).drive
        or ".." in PurePosixPath(name).parts
    ):
        raise ConfigError(
            f"file name {name!r} is not a safe relative path (no '..', no absolute paths, "
            "no backslashes); rename the file"
        )
    path = PurePosixPath(name)
    if path.name in ("", "."):
        raise ConfigError(f"file name {name!r} has no file part")
    return path.with_suffix(".png")


def write_output_images(
    inputs: Array,
    names: Sequence[str],
    model: nn.Module,
    predictions: Predictions,
    *,
    output: str,
    folder: Path,
    overwrite: bool = False,
) -> list[Path]:
    """Write one PNG per input to ``folder``, made by the registered ``output`` function.

    ``inputs`` are the model inputs (``[n, C, H, W]`` or ``[n, H, W]``). Input ``a/b.jpg``
    gives ``folder/a/b.png`` (folders are created). Every name is checked before anything
    is written; each file is written atomically.

    Returns:
        The written paths, in input order.

    Raises:
        UnknownNameError: ``output`` is not registered in :data:`IMAGE_OUTPUTS`.
        ConfigError: an unsafe file name ('..', absolute), two inputs mapping to the same
            output file, an existing file without ``overwrite``, inputs that are not
            images, an output function that does not return ``H x W x 3`` uint8, or the
            output does not fit the model (``mask`` with a classifier).
        DataError: inputs, names and predictions disagree.
    """
    function = IMAGE_OUTPUTS.get(output)
    if not isinstance(inputs, np.ndarray) or inputs.ndim not in (3, 4):
        shape = inputs.shape if isinstance(inputs, np.ndarray) else None
        raise ConfigError(f"image outputs need image inputs [n, C, H, W] or [n, H, W], got {shape}")
    if list(names) != predictions.names or len(inputs) != len(names):
        raise DataError("inputs, names and predictions must describe the same files in order")
    targets: dict[PurePosixPath, str] = {}
    for name in names:
        relpath = _output_relpath(name)
        if relpath in targets:
            raise ConfigError(f"files {targets[relpath]!r} and {name!r} both map to {relpath}")
        targets[relpath] = name
    written: list[Path] = []
    for index, relpath in enumerate(targets):
        model_input = np.asarray(inputs[index])
        context = ImageContext(
            _display_image(model_input), model_input, model, predictions.row(index)
        )
        image = function(context)
        if (
            not isinstance(image, np.ndarray)
            or image.dtype != np.uint8
            or image.ndim != 3
            or image.shape[2] != 3
        ):
            raise ConfigError(f"image output {output!r} must return an H x W x 3 uint8 array")
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        path = folder / relpath
        if not path.resolve().is_relative_to(folder.resolve()):  # a symlinked subfolder
            raise ConfigError(f"output image {path} would be written outside {folder}")
        _write_atomically(path, buffer.getvalue(), overwrite=overwrite)
        written.append(path)
    return written
