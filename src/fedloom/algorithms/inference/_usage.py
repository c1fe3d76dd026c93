"""Usage limits: how many of a batch's predictions a model's usage limit still allows.

A worker asks :func:`apply_usage_limit` how many new results fit under the limit and
:func:`cut` s its :class:`~fedloom.algorithms.inference._predictions.Predictions` to that many.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedloom.algorithms.inference._predictions import Predictions
from fedloom.errors import ConfigError

__all__ = ["UsageCut", "apply_usage_limit", "cut"]


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
