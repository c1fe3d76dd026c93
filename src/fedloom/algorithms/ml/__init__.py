"""Machine-learning side of fedloom's algorithms: torch models, training, state transfer.

Models are rebuilt from a registered name plus JSON config (:data:`MODELS`,
:func:`build_model`); their state travels as named numpy arrays
(:func:`state_to_arrays`, :func:`load_arrays`).
"""

from fedloom.algorithms.ml._local_round import (
    METRIC_NAMES,
    LocalRound,
    flat_metrics,
    local_round,
    round_seed,
    split_validation,
    weighted_metrics,
)
from fedloom.algorithms.ml._models import MODELS, ModelFactory, ModelSpec, build_model
from fedloom.algorithms.ml._torch_adapter import load_arrays, state_to_arrays
from fedloom.algorithms.ml._training import TrainingConfig, evaluate, train_local

__all__ = [
    "METRIC_NAMES",
    "MODELS",
    "ModelFactory",
    "LocalRound",
    "ModelSpec",
    "TrainingConfig",
    "build_model",
    "evaluate",
    "flat_metrics",
    "load_arrays",
    "local_round",
    "round_seed",
    "split_validation",
    "state_to_arrays",
    "train_local",
    "weighted_metrics",
]
