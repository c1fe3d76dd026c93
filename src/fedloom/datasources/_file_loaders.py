"""File loaders: how a :class:`~fedloom.datasources._files.FileSource` turns one file into a value.

:data:`LOADERS` holds them by name: ``image``, ``bytes`` and ``table`` are built in (with
the checks of their options, run when a source is built); plugins add more.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from fedloom._registry import Registry
from fedloom.datasources._table import SUFFIX_FORMATS
from fedloom.errors import ConfigError, DataError

Loader = Callable[[Path, Mapping[str, Any]], Any]
"""Turns one file into a value: ``loader(path, options)``; it may raise anything on a bad
file (:meth:`FileSource.load` turns that into a DataError naming the file)."""

LOADERS: Registry[Loader] = Registry("file loader")
"""Loaders by name: ``image``, ``bytes`` and ``table`` built in; plugins add more with
``@LOADERS.register("name")``."""

IMAGE_MODES = ("RGB", "L")
IMAGE_OPTIONS = ("channels_first", "mode", "size")
"""The image loader's options (see :func:`_load_image`)."""


def _image_options(options: Mapping[str, Any]) -> tuple[tuple[int, int] | None, str, bool]:
    """The image loader's ``size``, ``mode`` and ``channels_first``, checked."""
    unknown = sorted(str(k) for k in options if k not in IMAGE_OPTIONS)
    if unknown:
        raise ConfigError(f"unknown image loader options {unknown}; known: {list(IMAGE_OPTIONS)}")
    mode = options.get("mode", "RGB")
    if mode not in IMAGE_MODES:
        raise ConfigError(f"image mode must be one of {list(IMAGE_MODES)}, not {mode!r}")
    channels_first = options.get("channels_first", False)
    if not isinstance(channels_first, bool):
        raise ConfigError(f"image channels_first must be true or false, not {channels_first!r}")
    size = options.get("size")
    if size is None:
        return None, mode, channels_first
    if (
        isinstance(size, str | bytes)
        or not isinstance(size, Sequence)
        or len(size) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in size)
    ):
        raise ConfigError(f"image size must be [height, width] of ints >= 1, not {size!r}")
    return (size[0], size[1]), mode, channels_first


def _no_options(options: Mapping[str, Any]) -> None:
    if options:
        raise ConfigError(f"this loader takes no options, got {sorted(str(k) for k in options)}")


_OPTION_CHECKS: dict[str, Callable[[Mapping[str, Any]], object]] = {
    "image": _image_options,
    "bytes": _no_options,
    "table": _no_options,
}


@LOADERS.register("image")
def _load_image(path: Path, options: Mapping[str, Any]) -> np.ndarray:
    """An image as float32 ``(h, w, c)`` in [0, 1], or ``(c, h, w)`` with ``channels_first=True``.

    ``(c, h, w)`` is what torch's convolutions take. Options: ``size=[h, w]``, ``mode``
    ("RGB" or "L"), ``channels_first`` (default False).
    """
    size, mode, channels_first = _image_options(options)
    with Image.open(path) as image:
        converted = image.convert(mode)
    if size is not None and converted.size != (size[1], size[0]):
        converted = converted.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    pixels = np.asarray(converted, dtype=np.float32) / np.float32(255.0)
    pixels = pixels[..., np.newaxis] if pixels.ndim == 2 else pixels
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)) if channels_first else pixels


@LOADERS.register("bytes")
def _load_bytes(path: Path, options: Mapping[str, Any]) -> bytes:
    """The file's bytes."""
    return path.read_bytes()


@LOADERS.register("table")
def _load_row(path: Path, options: Mapping[str, Any]) -> dict[str, Any]:
    """The first row of a CSV/Parquet file as a column -> value dict."""
    file_format = SUFFIX_FORMATS.get(path.suffix.lower())
    if file_format is None:
        raise DataError(f"unknown table suffix {path.suffix!r}; use {sorted(SUFFIX_FORMATS)}")
    if file_format == "csv":
        frame = pd.read_csv(path, nrows=1)
    else:
        frame = pd.read_parquet(path, engine="pyarrow")
    if len(frame) == 0:
        raise DataError("the table has no rows")
    row = frame.head(1).to_dict(orient="records")[0]
    return {str(key): value for key, value in row.items()}
