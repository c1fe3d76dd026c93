"""Predictions: run a model on a batch of inputs and keep each input's class probabilities.

:func:`predict` runs a model on a batch (one entry per file) and returns
:class:`Predictions`, read-only class indices and softmax probabilities in input order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fedloom.errors import ConfigError, DataError, EmptyDatasetError, SchemaMismatchError

__all__ = [
    "DEFAULT_INFERENCE_BATCH_SIZE",
    "PredictionRow",
    "Predictions",
    "predict",
]

Array = npt.NDArray[Any]

DEFAULT_INFERENCE_BATCH_SIZE = 256


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
