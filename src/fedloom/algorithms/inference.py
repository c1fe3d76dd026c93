"""Model inference on a pod: predictions, usage limits, CSV reports and output images.

This is the computation side only; the inference protocol moves the results. A worker
runs :func:`predict` on a batch, asks :func:`apply_usage_limit` how many results the
model's usage limit still allows, :func:`cut` s the predictions to that many, and turns
them into report rows (:func:`report_rows`) that are written at the pod
(:func:`write_report_csv`) and/or sent to the modeller (:func:`rows_to_body`). The
image-output variant writes one PNG per input with a registered :data:`IMAGE_OUTPUTS`
function (:func:`write_output_images`).

Models are either built from a registered name (:func:`~fedloom.algorithms.ml.build_model`)
or loaded from an *approved* safetensors file (:func:`load_approved_model`): its SHA-256
must be on the pod's list, and it is never unpickled.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import MappingProxyType
from typing import Any

import numpy as np
import numpy.typing as npt
import safetensors.numpy
import torch
from PIL import Image
from torch import nn

from fedloom.algorithms.ml import ModelSpec, build_model, load_arrays
from fedloom.errors import (
    AccessDeniedError,
    ConfigError,
    DataError,
    EmptyDatasetError,
    ProtocolError,
    SchemaMismatchError,
)
from fedloom.registry import Registry

__all__ = [
    "DEFAULT_INFERENCE_BATCH_SIZE",
    "IMAGE_OUTPUTS",
    "REPORT_COLUMNS",
    "ImageContext",
    "ImageOutput",
    "PredictionRow",
    "Predictions",
    "UsageCut",
    "apply_usage_limit",
    "cut",
    "load_approved_model",
    "predict",
    "report_rows",
    "rows_from_body",
    "rows_to_body",
    "write_output_images",
    "write_report_csv",
]

Array = npt.NDArray[Any]

DEFAULT_INFERENCE_BATCH_SIZE = 256
REPORT_COLUMNS = ("file", "prediction", "probabilities", "status")
STATUS_OK = "ok"
STATUS_FAILED_PREFIX = "failed: "
PROBABILITY_DECIMALS = 6

_NO_FAILURES: Mapping[str, str] = MappingProxyType({})
_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


# --- predictions ------------------------------------------------------------------------


def _frozen_copy(array: Array, dtype: type[np.generic]) -> Array:
    copy = np.array(array, dtype=dtype, copy=True, order="C")
    copy.setflags(write=False)
    return copy


@dataclass(frozen=True, eq=False)
class PredictionRow:
    """One input's prediction: its file name, class index and class probabilities."""

    name: str
    predicted: int
    probabilities: Array


@dataclass(frozen=True, eq=False)
class Predictions:
    """Predictions for a batch of inputs, in input order.

    ``predicted`` is the int64 class index per input and ``probabilities`` the float32
    ``[n, classes]`` softmax, each row summing to 1. Both are read-only copies.
    """

    names: list[str]
    predicted: Array
    probabilities: Array

    def __post_init__(self) -> None:
        """Check that names, classes and probabilities agree; keep read-only copies.

        Raises:
            ConfigError: lengths differ, a name is not a string, names repeat, or the
                arrays have the wrong number of dimensions.
        """
        names = list(self.names)
        if not all(isinstance(name, str) for name in names):
            raise ConfigError("prediction names must be strings (the input file names)")
        if len(set(names)) != len(names):
            raise ConfigError("prediction names must be unique (one row per input file)")
        predicted = _frozen_copy(np.asarray(self.predicted), np.int64)
        probabilities = _frozen_copy(np.asarray(self.probabilities), np.float32)
        if predicted.ndim != 1 or probabilities.ndim != 2:
            raise ConfigError(
                f"predicted must be 1-D and probabilities 2-D, got shapes {predicted.shape} "
                f"and {probabilities.shape}"
            )
        if not len(names) == len(predicted) == len(probabilities):
            raise ConfigError(
                f"{len(names)} names, {len(predicted)} predictions and "
                f"{len(probabilities)} probability rows do not match"
            )
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "predicted", predicted)
        object.__setattr__(self, "probabilities", probabilities)

    def __len__(self) -> int:
        return len(self.names)

    def row(self, index: int) -> PredictionRow:
        """The prediction for input ``index``."""
        return PredictionRow(
            self.names[index], int(self.predicted[index]), self.probabilities[index]
        )


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive int, got {value!r}")
    return value


def _check_inputs(inputs: Array, names: Sequence[str]) -> None:
    if not isinstance(inputs, np.ndarray):
        raise DataError(f"inputs must be a numpy array, got a {type(inputs).__name__}")
    if inputs.ndim == 0 or len(inputs) == 0:
        raise EmptyDatasetError("there is nothing to predict: inputs is empty")
    if inputs.dtype.kind not in "fiub" or not np.isfinite(inputs).all():
        raise DataError(f"inputs must be numeric without NaN or Inf (dtype {inputs.dtype})")
    if isinstance(names, str) or len(names) != len(inputs):
        raise DataError(f"{len(inputs)} inputs need {len(inputs)} file names, got {len(names)}")


def _probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Class probabilities per input from ``[n, classes]`` or ``[n, classes, ...]`` outputs.

    For per-pixel outputs (segmentation) the per-pixel softmax is averaged over the
    pixels: the share of the image each class covers.
    """
    probabilities = torch.softmax(logits.double(), dim=1)
    if probabilities.ndim > 2:
        probabilities = probabilities.flatten(start_dim=2).mean(dim=2)
    return probabilities


def predict(
    model: nn.Module,
    inputs: Array,
    names: Sequence[str],
    *,
    batch_size: int = DEFAULT_INFERENCE_BATCH_SIZE,
    device: str = "cpu",
) -> Predictions:
    """Run ``model`` on ``inputs`` (first axis: one entry per file) and softmax its outputs.

    The model is moved to ``device`` (in place, as :meth:`torch.nn.Module.to` does) and
    run in eval mode under ``torch.no_grad()``; its train/eval mode is restored afterwards.
    Inputs are cast to the model's floating dtype. The model must return ``[n, classes]``
    logits, or ``[n, classes, H, W]`` per-pixel logits (segmentation), for which the
    probabilities are the per-pixel softmax averaged over the image.

    Raises:
        EmptyDatasetError: ``inputs`` is empty.
        DataError: ``inputs`` is not a finite numeric array, the number of names differs,
            or the model produced NaN/Inf.
        SchemaMismatchError: the model cannot run on inputs of this shape, or returns
            outputs of the wrong shape (the message gives both shapes).
        ConfigError: ``batch_size`` is not a positive int, ``device`` is not a torch
            device, or names repeat.
    """
    _positive_int("batch_size", batch_size)
    _check_inputs(inputs, names)
    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a torch device: {exc}") from exc
    model.to(target)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    item_shape = tuple(inputs.shape[1:])
    was_training = model.training
    model.eval()
    chunks: list[torch.Tensor] = []
    try:
        with torch.no_grad():
            for start in range(0, len(inputs), batch_size):
                batch = np.array(inputs[start : start + batch_size], order="C")
                features = torch.from_numpy(batch).to(device=target, dtype=dtype)
                try:
                    logits = model(features)
                except (RuntimeError, ValueError) as exc:
                    raise SchemaMismatchError(
                        f"the model cannot run on inputs of shape {item_shape} per file "
                        f"(batch {tuple(features.shape)}): {exc}"
                    ) from exc
                if (
                    not isinstance(logits, torch.Tensor)
                    or logits.ndim < 2
                    or logits.shape[0] != len(batch)
                    or logits.shape[1] < 1
                ):
                    shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else None
                    raise SchemaMismatchError(
                        f"the model must return [batch, classes] logits for inputs of shape "
                        f"{item_shape} per file, got output shape {shape}"
                    )
                if not torch.isfinite(logits).all():
                    raise DataError(
                        f"the model produced NaN or Inf for inputs "
                        f"{start}..{start + len(batch) - 1}"
                    )
                chunks.append(_probabilities(logits).cpu())
    finally:
        model.train(was_training)
    probabilities = torch.cat(chunks).numpy()
    return Predictions(
        names=list(names),
        predicted=probabilities.argmax(axis=1).astype(np.int64),
        probabilities=probabilities.astype(np.float32),
    )


# --- usage limits -----------------------------------------------------------------------


@dataclass(frozen=True)
class UsageCut:
    """What a usage limit allows of one batch's new results.

    ``allowed`` results may be released, ``overrun`` were cut. ``exceeded`` is True when
    the total reached or passed the limit: the task must then end with TASK_ABORT
    ``LIMITS_EXCEEDED`` after delivering (and recording) the allowed results.
    """

    allowed: int
    overrun: int
    exceeded: bool


def _count(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ConfigError(f"{name} must be an int >= 0, got {value!r}")
    return int(value)


def apply_usage_limit(used_before: int, new: int, limit: int | None) -> UsageCut:
    """How many of ``new`` results fit under ``limit`` after ``used_before`` were used.

    ``limit=None`` means unlimited. Example: 10 used, 14 new, limit 20 gives allowed 10,
    overrun 4, exceeded True; 15 used, 5 new, limit 20 gives 5, 0, True (the limit is
    reached exactly).

    Raises:
        ConfigError: an argument is negative, a bool or not an int.
    """
    used_before = _count("used_before", used_before)
    new = _count("new", new)
    if limit is None:
        return UsageCut(allowed=new, overrun=0, exceeded=False)
    limit = _count("limit", limit)
    allowed = min(new, max(limit - used_before, 0))
    return UsageCut(allowed=allowed, overrun=new - allowed, exceeded=used_before + new >= limit)


def cut(predictions: Predictions, allowed: int) -> Predictions:
    """The first ``allowed`` rows of ``predictions``.

    Raises:
        ConfigError: ``allowed`` is not an int in ``[0, len(predictions)]``.
    """
    allowed = _count("allowed", allowed)
    if allowed > len(predictions):
        raise ConfigError(f"cannot keep {allowed} of {len(predictions)} predictions")
    return Predictions(
        names=predictions.names[:allowed],
        predicted=predictions.predicted[:allowed],
        probabilities=predictions.probabilities[:allowed],
    )


# --- report rows ------------------------------------------------------------------------


def _probabilities_text(row: Array) -> str:
    values = [round(float(value), PROBABILITY_DECIMALS) for value in row]
    return json.dumps(values, separators=(",", ":"))


def report_rows(
    predictions: Predictions, failed: Mapping[str, str] = _NO_FAILURES
) -> list[dict[str, str]]:
    """One report row per file, ordered by file name (see :data:`REPORT_COLUMNS`).

    A predicted file gets its class index, its probabilities as a compact JSON list
    (rounded to 6 decimals) and status ``"ok"``; a failed file (name → reason) gets an
    empty prediction and probabilities and status ``"failed: <reason>"``.

    Raises:
        ConfigError: a failed file is also in ``predictions``, or a name or reason is not
            a string.
    """
    rows: dict[str, dict[str, str]] = {}
    for index, name in enumerate(predictions.names):
        rows[name] = {
            "file": name,
            "prediction": str(int(predictions.predicted[index])),
            "probabilities": _probabilities_text(predictions.probabilities[index]),
            "status": STATUS_OK,
        }
    for name, reason in failed.items():
        if not isinstance(name, str) or not isinstance(reason, str):
            raise ConfigError(f"failed files must map names to reasons, got {name!r}: {reason!r}")
        if name in rows:
            raise ConfigError(f"file {name!r} is both predicted and failed")
        rows[name] = {
            "file": name,
            "prediction": "",
            "probabilities": "",
            "status": STATUS_FAILED_PREFIX + reason,
        }
    return [rows[name] for name in sorted(rows)]


def _check_row(row: object, error: type[Exception]) -> dict[str, str]:
    if not isinstance(row, Mapping) or set(row) != set(REPORT_COLUMNS):
        raise error(f"a report row must be a mapping with keys {', '.join(REPORT_COLUMNS)}")
    if not all(isinstance(row[key], str) for key in REPORT_COLUMNS):
        raise error("report row values must be strings")
    return {key: row[key] for key in REPORT_COLUMNS}


def write_report_csv(
    rows: Iterable[Mapping[str, str]], path: Path, *, overwrite: bool = False
) -> Path:
    """Write ``rows`` as a UTF-8 CSV with header :data:`REPORT_COLUMNS`; return ``path``.

    The file is written next to ``path`` under a temporary name and then moved into place,
    so readers see either no report (or the old one) or the whole new one. An existing
    file is only replaced when ``overwrite`` is True.

    Raises:
        ConfigError: a row does not have exactly the report columns as strings, ``path``
            exists and ``overwrite`` is False, or the file cannot be written.
    """
    checked = [_check_row(row, ConfigError) for row in rows]
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(REPORT_COLUMNS)
    writer.writerows([row[key] for key in REPORT_COLUMNS] for row in checked)
    _write_atomically(path, buffer.getvalue().encode("utf-8"), overwrite=overwrite)
    return path


def _write_atomically(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write ``data`` to a temporary file next to ``path``, then move it into place."""
    if not overwrite and path.exists():
        raise ConfigError(f"{path} already exists; choose another path or pass overwrite=True")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc}") from exc
    temp = Path(name)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        if overwrite:
            os.replace(temp, path)
        else:
            # A hard link fails if the target appeared since the check: never clobbers.
            os.link(temp, path)
    except FileExistsError as exc:
        raise ConfigError(
            f"{path} already exists; choose another path or pass overwrite=True"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc}") from exc
    finally:
        temp.unlink(missing_ok=True)


def rows_to_body(rows: Iterable[Mapping[str, str]]) -> list[list[str]]:
    """Report rows as lists of strings in :data:`REPORT_COLUMNS` order (msgpack-able).

    Raises:
        ConfigError: a row does not have exactly the report columns as strings.
    """
    checked = [_check_row(row, ConfigError) for row in rows]
    return [[row[key] for key in REPORT_COLUMNS] for row in checked]


def _check_probabilities(text: str) -> None:
    try:
        values = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"report probabilities {text[:80]!r} are not JSON") from exc
    if not isinstance(values, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    ):
        raise ProtocolError(f"report probabilities {text[:80]!r} are not a list of numbers")


def rows_from_body(body: object) -> list[dict[str, str]]:
    """Rebuild report rows from a received :func:`rows_to_body` body.

    Raises:
        ProtocolError: not a list of 4-string rows, an empty or repeated file name, a
            status other than ``ok`` / ``failed: ...``, an ``ok`` row without an integer
            prediction and a JSON list of numbers, or a failed row with either filled in.
    """
    if not isinstance(body, list | tuple):
        raise ProtocolError(f"a report body must be a list of rows, got {type(body).__name__}")
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for index, item in enumerate(body):
        if (
            not isinstance(item, list | tuple)
            or len(item) != len(REPORT_COLUMNS)
            or not all(isinstance(value, str) for value in item)
        ):
            raise ProtocolError(f"report row {index} must be {len(REPORT_COLUMNS)} strings")
        row = dict(zip(REPORT_COLUMNS, item, strict=True))
        name, status = row["file"], row["status"]
        if not name or name in seen:
            raise ProtocolError(f"report row {index} has an empty or repeated file name")
        seen.add(name)
        if status == STATUS_OK:
            if not re.fullmatch(r"-?[0-9]+", row["prediction"]):
                raise ProtocolError(f"report row {index} has prediction {row['prediction']!r}")
            _check_probabilities(row["probabilities"])
        elif status.startswith(STATUS_FAILED_PREFIX):
            if row["prediction"] or row["probabilities"]:
                raise ProtocolError(f"failed report row {index} must not carry a prediction")
        else:
            raise ProtocolError(f"report row {index} has unknown status {status[:80]!r}")
        rows.append(row)
    return rows


# --- output images ----------------------------------------------------------------------


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


# --- approved model files ---------------------------------------------------------------


def load_approved_model(path: Path, approved_sha256: Collection[str], spec: ModelSpec) -> nn.Module:
    """Build ``spec``'s model and load the weights of an approved safetensors file.

    The file's SHA-256 (of the bytes that are then loaded) must be in
    ``approved_sha256``; the weights are read with safetensors, never unpickled.

    Raises:
        AccessDeniedError: the file's SHA-256 is not approved (the message names it).
        ConfigError: an approved hash is not 64 hex digits, the file cannot be read or is
            not a safetensors file, or its weights do not fit the model.
        UnknownNameError: ``spec.name`` is not a registered model.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read model file {path}: {exc}") from exc
    return load_approved_model_bytes(data, approved_sha256, spec, name=Path(path).name)


def load_approved_model_bytes(
    data: bytes, approved_sha256: Collection[str], spec: ModelSpec, *, name: str = "model file"
) -> nn.Module:
    """:func:`load_approved_model` for a file's bytes (e.g. as a modeller sent them).

    Raises:
        AccessDeniedError, ConfigError, UnknownNameError: as :func:`load_approved_model`.
    """
    approved = set()
    for digest in approved_sha256:
        if not isinstance(digest, str) or not _SHA256_PATTERN.fullmatch(digest.lower()):
            raise ConfigError(f"approved model hash {digest!r} is not 64 hex digits")
        approved.add(digest.lower())
    digest = hashlib.sha256(data).hexdigest()
    if digest not in approved:
        raise AccessDeniedError(
            f"{name} has SHA-256 {digest}, which this pod has not "
            "approved; add the hash to the pod's approved model hashes to allow it"
        )
    return load_model_bytes(data, spec, name=name)


def load_model_bytes(data: bytes, spec: ModelSpec, *, name: str = "model file") -> nn.Module:
    """``spec``'s model with the weights of a safetensors file's bytes, in eval mode.

    Raises:
        ConfigError: the bytes are not a safetensors file, or its arrays do not fit the
            model (a key missing or unknown, another shape or dtype: named).
        UnknownNameError: ``spec`` names no registered model.
    """
    try:
        arrays = safetensors.numpy.load(data)
    except Exception as exc:  # safetensors raises its own untyped errors
        raise ConfigError(f"{name} is not a valid safetensors file: {exc}") from exc
    model = build_model(spec)
    try:
        load_arrays(model, arrays)
    except ConfigError as exc:
        raise ConfigError(f"{name} does not fit model {spec.name!r}: {exc}") from exc
    model.eval()
    return model
