"""One participant's share of a federated training round, wherever it runs.

A pod's FedAvg worker and a simulated client run exactly this code: evaluate the global
model on the local validation split, then train it locally with a seed derived from the
task seed, the participant and the round (:func:`round_seed`), so a participant's update
does not depend on which process, thread or machine computed it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from torch import nn

from fedloom.algorithms.ml._training import (
    BatchCallback,
    EpochEndCallback,
    EpochStartCallback,
    LossTerm,
    TrainingConfig,
    evaluate,
    train_local,
)

__all__ = [
    "METRIC_NAMES",
    "LocalRound",
    "flat_metrics",
    "local_round",
    "round_seed",
    "split_validation",
    "weighted_metrics",
]

Array = npt.NDArray[Any]

METRIC_NAMES = ("loss", "accuracy")


def round_seed(*parts: object) -> int:
    """A 32-bit seed from ``parts`` (task seed, participant, round ...), stable everywhere."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def split_validation(
    x: Array, y: Array, fraction: float, participant: str, seed: int
) -> tuple[Array, Array, Array, Array]:
    """``(x_train, y_train, x_val, y_val)``: a seeded ``fraction`` of the rows held out.

    The rows are shuffled by ``round_seed(seed, participant)`` before the cut; with
    ``fraction == 0`` nothing is held out and the rows keep their order.
    """
    n_val = int(len(x) * fraction)
    if n_val == 0:
        return x, y, x[:0], y[:0]
    order = np.random.default_rng(round_seed(seed, participant)).permutation(len(x))
    return x[order[n_val:]], y[order[n_val:]], x[order[:n_val]], y[order[:n_val]]


@dataclass(frozen=True)
class LocalRound:
    """Metrics of one local round: on the validation split before training, then training."""

    train: dict[str, float]
    validation: dict[str, float]
    num_samples: int


def local_round(
    model: nn.Module,
    x_train: Array,
    y_train: Array,
    config: TrainingConfig,
    *,
    seed: int,
    x_val: Array | None = None,
    y_val: Array | None = None,
    on_batch: BatchCallback | None = None,
    on_epoch_start: EpochStartCallback | None = None,
    on_epoch_end: EpochEndCallback | None = None,
    exclusive_rng: bool = False,
    loss_term: LossTerm | None = None,
) -> LocalRound:
    """Evaluate ``model`` (holding the global parameters) then train it in place.

    Raises:
        DataError, ConfigError: as :func:`train_local` and :func:`evaluate`.
    """
    validation: dict[str, float] = {}
    if x_val is not None and y_val is not None and len(x_val):
        validation = evaluate(model, x_val, y_val)
    train = train_local(
        model,
        x_train,
        y_train,
        config,
        seed=seed,
        on_batch=on_batch,
        on_epoch_start=on_epoch_start,
        on_epoch_end=on_epoch_end,
        exclusive_rng=exclusive_rng,
        loss_term=loss_term,
    )
    return LocalRound(train=train, validation=validation, num_samples=len(x_train))


def flat_metrics(
    num_samples: float, train: Mapping[str, float], validation: Mapping[str, float]
) -> dict[str, float]:
    """One participant's round as ``{"num_samples", "train_loss", ..., "validation_..."}``."""
    flat = {"num_samples": float(num_samples)}
    for phase, values in (("train", train), ("validation", validation)):
        for name in (*METRIC_NAMES, "num_samples"):
            if name in values:
                flat[f"{phase}_{name}"] = float(values[name])
    return flat


def weighted_metrics(participants: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Sample-weighted means of the participants' :func:`flat_metrics`.

    Train metrics are weighted by ``num_samples``, validation ones by
    ``validation_num_samples``; a metric with a non-finite value somewhere is left out.
    """
    rows = list(participants)
    result: dict[str, float] = {"num_samples": float(sum(m["num_samples"] for m in rows))}
    for phase, weight_key in (("train", "num_samples"), ("validation", "validation_num_samples")):
        for name in METRIC_NAMES:
            key = f"{phase}_{name}"
            pairs = [(m[key], m.get(weight_key, 0.0)) for m in rows if key in m]
            total = sum(w for _, w in pairs)
            if pairs and total > 0 and all(math.isfinite(v) for v, _ in pairs):
                result[key] = sum(v * w for v, w in pairs) / total
    return result
