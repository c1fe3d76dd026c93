"""The computations on each side of a task.

Aggregation, statistics, analytics, inference (:mod:`~fedloom.algorithms.inference`) and
machine learning (:mod:`~fedloom.algorithms.ml`).
"""

from fedloom.algorithms._aggregation import (
    WeightedMean,
    WeightedSum,
    all_finite,
    fedavg,
    validate_update,
)

__all__ = ["WeightedMean", "WeightedSum", "all_finite", "fedavg", "validate_update"]
