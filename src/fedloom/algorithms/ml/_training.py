"""Local training and evaluation of a classifier on numpy arrays.

:func:`train_local` is what a worker runs on its partition in one federated round: a fresh
optimizer, cross-entropy loss, and all randomness (shuffling, dropout) drawn from ``seed``,
so the same seed gives bit-identical weights. The global torch RNG is left as it was.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional

from fedloom.algorithms.ml._rng import seeded
from fedloom.errors import ConfigError, DataError, EmptyDatasetError

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EVAL_BATCH_SIZE",
    "DEFAULT_LEARNING_RATE",
    "OPTIMIZERS",
    "TrainingConfig",
    "evaluate",
    "train_local",
]

DEFAULT_BATCH_SIZE = 32
DEFAULT_EVAL_BATCH_SIZE = 256
DEFAULT_LEARNING_RATE = 0.01
OPTIMIZERS = ("sgd", "adam")
_MAX_SEED = 2**64

BatchCallback = Callable[[int, int, float], None]
"""``(epoch, batch_index, loss)``, called after each optimizer step."""
EpochStartCallback = Callable[[int], None]
"""``(epoch)``, called before an epoch's first batch."""
EpochEndCallback = Callable[[int, Mapping[str, float]], None]
"""``(epoch, {"loss", "accuracy"})``, called after an epoch's last batch."""
LossTerm = Callable[[nn.Module], "torch.Tensor | None"]
"""``(model) -> scalar or None``, added to each batch's loss (a strategy's client hook)."""


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an int, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{name} must be > 0, got {value}")
    return value


def _real(name: str, value: object, *, positive: bool, below_one: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be finite, got {value!r}")
    if positive and number <= 0.0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")
    if number < 0.0:
        raise ConfigError(f"{name} must be >= 0, got {value!r}")
    if below_one and number >= 1.0:
        raise ConfigError(f"{name} must be < 1, got {value!r}")
    return number


@dataclass(frozen=True)
class TrainingConfig:
    """How :func:`train_local` trains: epochs, batches and the optimizer."""

    epochs: int = 1
    batch_size: int = DEFAULT_BATCH_SIZE
    optimizer: str = "sgd"
    learning_rate: float = DEFAULT_LEARNING_RATE
    momentum: float = 0.0
    weight_decay: float = 0.0
    shuffle: bool = True

    def __post_init__(self) -> None:
        """Validate every field; ints given for float fields become floats.

        Raises:
            ConfigError: a field of the wrong type or out of range; ``momentum`` > 0 with
                ``adam`` (Adam has no momentum setting).
        """
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}"
            )
        set_field = object.__setattr__
        set_field(self, "learning_rate", _real("learning_rate", self.learning_rate, positive=True))
        set_field(
            self, "momentum", _real("momentum", self.momentum, positive=False, below_one=True)
        )
        set_field(self, "weight_decay", _real("weight_decay", self.weight_decay, positive=False))
        if not isinstance(self.shuffle, bool):
            raise ConfigError(f"shuffle must be true or false, got {self.shuffle!r}")
        if self.optimizer == "adam" and self.momentum > 0.0:
            raise ConfigError("momentum only applies to optimizer 'sgd'; set it to 0 for 'adam'")

    def to_config(self) -> dict[str, Any]:
        """The fields as a JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_config(cls, config: object) -> TrainingConfig:
        """Rebuild from :meth:`to_config` output; left-out fields take their defaults.

        Raises:
            ConfigError: not a mapping, unknown keys, or invalid values.
        """
        if not isinstance(config, Mapping):
            raise ConfigError(f"a training config must be a mapping, got {type(config).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(repr(key) for key in config if key not in known)
        if unknown:
            raise ConfigError(
                f"unknown training config keys: {', '.join(unknown)} "
                f"(known: {', '.join(sorted(known))})"
            )
        return cls(**config)


# --- helpers ----------------------------------------------------------------------------


def _placement(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.device, parameter.dtype
    return torch.device("cpu"), torch.float32


def _tensors(
    x: npt.NDArray[Any], y: npt.NDArray[Any], device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check the arrays and copy them into tensors (features as ``dtype``, labels int64)."""
    if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
        raise DataError("x and y must be numpy arrays")
    if x.ndim == 0 or len(x) == 0:
        raise EmptyDatasetError("there is no data to use: x is empty")
    if y.ndim != 1:
        raise DataError(f"y must be a 1-D array of class labels, got shape {y.shape}")
    if len(x) != len(y):
        raise DataError(f"x has {len(x)} rows but y has {len(y)} labels")
    if x.dtype.kind not in "fiub" or not np.isfinite(x).all():
        raise DataError("x must be a numeric array without NaN or Inf")
    if y.dtype.kind not in "iu":
        raise DataError(f"y must hold integer class labels, got dtype {y.dtype}; use y.astype(int)")
    if y.min() < 0:
        raise DataError(f"class labels must be >= 0, got {y.min()}")
    features = torch.from_numpy(np.array(x, copy=True, order="C")).to(device=device, dtype=dtype)
    labels = torch.from_numpy(np.array(y, dtype=np.int64, order="C")).to(device)
    return features, labels


def _check_logits(logits: torch.Tensor, labels: torch.Tensor, max_label: int) -> None:
    """Raise unless ``logits`` is ``(batch, classes)`` with a class for ``max_label``."""
    if logits.ndim != 2 or logits.shape[0] != labels.shape[0]:
        raise ConfigError(
            f"the model must return (batch, classes) logits, got shape {tuple(logits.shape)}"
        )
    if max_label >= logits.shape[1]:
        raise DataError(
            f"label {max_label} is out of range for a model with {logits.shape[1]} outputs"
        )


def _optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ConfigError("the model has no trainable parameters")
    if config.optimizer == "adam":
        return torch.optim.Adam(
            parameters, lr=config.learning_rate, weight_decay=config.weight_decay
        )
    return torch.optim.SGD(
        parameters,
        lr=config.learning_rate,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )


# --- public -----------------------------------------------------------------------------


def train_local(
    model: nn.Module,
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    config: TrainingConfig,
    *,
    seed: int,
    on_batch: BatchCallback | None = None,
    on_epoch_start: EpochStartCallback | None = None,
    on_epoch_end: EpochEndCallback | None = None,
    exclusive_rng: bool = False,
    loss_term: LossTerm | None = None,
) -> dict[str, float]:
    """Train ``model`` in place on ``(x, y)`` with cross-entropy; return last-epoch metrics.

    ``loss_term(model)``, when given, is added to every batch's loss (a strategy's client
    hook, e.g. FedProx's proximal term); the reported loss includes it.

    ``exclusive_rng`` keeps torch's global generator to this call for its whole run, so a
    model with random layers (dropout) trains reproducibly even while other threads train
    (they wait): see :func:`~fedloom.algorithms.ml._rng.seeded`.

    Each call makes a fresh optimizer. Shuffling uses a ``torch.Generator`` seeded with
    ``seed`` and other randomness (dropout) a forked, seeded global RNG, so two calls with
    the same model state, data, config and seed give bit-identical weights (on CPU).
    ``on_batch(epoch, batch_index, loss)`` is called after every optimizer step,
    ``on_epoch_start(epoch)`` before an epoch's first batch and ``on_epoch_end(epoch,
    metrics)`` after its last, with the epoch's mean ``loss`` and ``accuracy``. They run in
    the training thread and only observe: the weights are the same with or without them.

    Returns:
        ``{"loss", "accuracy", "num_samples"}``: mean training loss and accuracy over the
        last epoch (measured on each batch before its step), and ``float(len(x))``.

    Raises:
        EmptyDatasetError: ``x`` is empty (a :class:`DataError`).
        DataError: length mismatch, non-numeric or non-finite ``x``, labels that are not
            non-negative integers or exceed the model's outputs.
        ConfigError: ``seed`` is not an int in ``[0, 2**64)``, the model has no trainable
            parameters or does not return ``(batch, classes)`` logits, or the loss became
            NaN/Inf (training diverged: lower the learning rate).
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < _MAX_SEED:
        raise ConfigError(f"seed must be an int in [0, 2**64), got {seed!r}")
    device, dtype = _placement(model)
    features, labels = _tensors(x, y, device, dtype)
    max_label = int(labels.max())
    count = len(labels)
    optimizer = _optimizer(model, config)
    generator = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.train()
    loss_sum, correct = 0.0, 0
    try:
        with seeded(seed, device, exclusive=exclusive_rng):
            for epoch in range(config.epochs):
                order = (
                    torch.randperm(count, generator=generator).to(device)
                    if config.shuffle
                    else None  # batches in row order: slices, no gathered copies
                )
                loss_sum, correct = 0.0, 0
                if on_epoch_start is not None:
                    on_epoch_start(epoch)
                for batch_index, start in enumerate(range(0, count, config.batch_size)):
                    stop = start + config.batch_size
                    if order is None:
                        batch_x, batch_y = features[start:stop], labels[start:stop]
                    else:
                        index = order[start:stop]
                        batch_x, batch_y = features[index], labels[index]
                    optimizer.zero_grad(set_to_none=True)
                    logits = model(batch_x)
                    if epoch == 0 and batch_index == 0:
                        _check_logits(logits, batch_y, max_label)
                    loss = functional.cross_entropy(logits, batch_y)
                    if loss_term is not None:
                        extra = loss_term(model)
                        if extra is not None:
                            loss = loss + extra
                    value = float(loss.detach())
                    if not math.isfinite(value):
                        raise ConfigError(
                            f"training diverged: loss is {value} at epoch {epoch}, batch "
                            f"{batch_index}; lower learning_rate (now {config.learning_rate})"
                        )
                    torch.autograd.backward(loss)
                    optimizer.step()
                    loss_sum += value * len(batch_y)
                    correct += int((logits.detach().argmax(dim=1) == batch_y).sum())
                    if on_batch is not None:
                        on_batch(epoch, batch_index, value)
                if on_epoch_end is not None:
                    on_epoch_end(epoch, {"loss": loss_sum / count, "accuracy": correct / count})
    finally:
        model.train(was_training)
    return {"loss": loss_sum / count, "accuracy": correct / count, "num_samples": float(count)}


def evaluate(
    model: nn.Module,
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    *,
    batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)``.

    Runs under ``torch.no_grad()`` in eval mode; the model's mode is restored afterwards.

    Returns:
        ``{"loss", "accuracy", "num_samples"}``.

    Raises:
        EmptyDatasetError: ``x`` is empty (a :class:`DataError`).
        DataError: same checks as :func:`train_local`.
        ConfigError: ``batch_size`` is not a positive int, or the model does not return
            ``(batch, classes)`` logits.
    """
    _positive_int("batch_size", batch_size)
    device, dtype = _placement(model)
    features, labels = _tensors(x, y, device, dtype)
    max_label = int(labels.max())
    count = len(labels)
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    try:
        with torch.no_grad():
            for start in range(0, count, batch_size):
                batch_x = features[start : start + batch_size]
                batch_y = labels[start : start + batch_size]
                logits = model(batch_x)
                if start == 0:
                    _check_logits(logits, batch_y, max_label)
                loss_sum += float(functional.cross_entropy(logits, batch_y, reduction="sum"))
                correct += int((logits.argmax(dim=1) == batch_y).sum())
    finally:
        model.train(was_training)
    return {"loss": loss_sum / count, "accuracy": correct / count, "num_samples": float(count)}
