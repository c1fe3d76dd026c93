"""Weighted averaging of model updates (FedAvg), one update at a time.

Updates are named numpy arrays (``{"fc.weight": array, ...}``) plus a positive weight,
usually the number of samples a pod trained on. Each update is checked against a
*reference* (the global model the round started from) before it touches the running
sum; a bad update is rejected with an :class:`~fedloom.errors.UpdateRejectedError` naming
the reason, and the aggregate goes on without it. Memory is O(model): the running sum is
one float64 array per key, never a list of updates.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from fedloom.errors import AggregationError, UpdateRejectedError, UpdateRejectionReason

__all__ = ["WeightedMean", "fedavg", "validate_update"]

Array = npt.NDArray[Any]

#: dtype kinds that can be averaged: floats, signed/unsigned integers and booleans.
SUPPORTED_KINDS = frozenset("fiub")
_MAX_KEYS_IN_DETAIL = 5

_Spec = tuple[np.dtype[Any], tuple[int, ...]]


def _name_keys(keys: Iterable[object]) -> str:
    names = sorted(repr(key) for key in keys)
    shown = ", ".join(names[:_MAX_KEYS_IN_DETAIL])
    more = len(names) - _MAX_KEYS_IN_DETAIL
    return f"{shown} and {more} more" if more > 0 else shown


def _reject(reason: UpdateRejectionReason, detail: str) -> UpdateRejectedError:
    return UpdateRejectedError(reason, detail)


def _check_weight(weight: object) -> float:
    """The weight as a float, if it is a finite real number > 0 (and not a bool)."""
    if isinstance(weight, bool | np.bool_) or not isinstance(weight, numbers.Real):
        raise _reject(
            UpdateRejectionReason.BAD_WEIGHT,
            f"weight must be a real number > 0, got {type(weight).__name__} {weight!r}",
        )
    try:
        value = float(weight)
    except OverflowError:
        value = math.inf
    if not math.isfinite(value) or value <= 0.0:
        raise _reject(
            UpdateRejectionReason.BAD_WEIGHT, f"weight must be finite and > 0, got {weight!r}"
        )
    return value


def _check_update(update: Mapping[Any, Any], specs: Mapping[str, _Spec], weight: object) -> float:
    """Validate ``update`` against ``specs``; return the weight as a float."""
    value = _check_weight(weight)
    if not isinstance(update, Mapping):
        raise _reject(
            UpdateRejectionReason.MALFORMED,
            f"an update must be a mapping of named arrays, got {type(update).__name__}",
        )
    unknown = [key for key in update if key not in specs]
    if unknown:
        raise _reject(UpdateRejectionReason.UNKNOWN_KEYS, f"unknown keys {_name_keys(unknown)}")
    missing = [key for key in specs if key not in update]
    if missing:
        raise _reject(UpdateRejectionReason.MISSING_KEYS, f"missing keys {_name_keys(missing)}")
    for key, (dtype, shape) in specs.items():
        array = update[key]
        if not isinstance(array, np.ndarray):
            raise _reject(
                UpdateRejectionReason.MALFORMED,
                f"{key!r} is a {type(array).__name__}, not a numpy array of {dtype}",
            )
        if array.dtype != dtype:
            raise _reject(
                UpdateRejectionReason.WRONG_DTYPE,
                f"{key!r} has dtype {array.dtype}, expected {dtype}",
            )
        if array.shape != shape:
            raise _reject(
                UpdateRejectionReason.WRONG_SHAPE,
                f"{key!r} has shape {array.shape}, expected {shape}",
            )
        if dtype.kind == "f" and not np.isfinite(array).all():
            raise _reject(UpdateRejectionReason.NON_FINITE, f"{key!r} contains NaN or Inf")
    return value


def _float_limits(dtype: np.dtype[Any]) -> tuple[float, float]:
    """The widest float range that casts to the integer ``dtype`` without overflow."""
    limits = np.iinfo(dtype)
    low, high = float(limits.min), float(limits.max)
    if high > limits.max:  # 64-bit: the float rounded up past the largest integer
        high = float(np.nextafter(high, 0.0))
    return low, high


def _specs_of(reference: Mapping[str, Array]) -> dict[str, _Spec]:
    specs: dict[str, _Spec] = {}
    for key, array in reference.items():
        if not isinstance(array, np.ndarray):
            raise AggregationError(
                f"reference {key!r} is a {type(array).__name__}, not a numpy array"
            )
        specs[key] = (array.dtype, array.shape)
    return specs


def validate_update(
    update: Mapping[str, Array], reference: Mapping[str, Array], weight: float
) -> None:
    """Check that ``update`` can be averaged into a model shaped like ``reference``.

    Checks run in this order: the weight, unknown keys, missing keys, then per key (in the
    reference's order) the dtype, the shape and, for float arrays, finiteness.

    Raises:
        UpdateRejectedError: with reason ``BAD_WEIGHT`` (not a finite real > 0, or a bool),
            ``MALFORMED`` (not a mapping, or a value that is not a numpy array),
            ``UNKNOWN_KEYS``, ``MISSING_KEYS``, ``WRONG_DTYPE``, ``WRONG_SHAPE`` or
            ``NON_FINITE``; the detail names the key.
        AggregationError: a value of ``reference`` is not a numpy array.
    """
    _check_update(update, _specs_of(reference), weight)


class WeightedMean:
    """Streaming weighted mean (FedAvg). Memory O(model), not O(number of updates).

    Sums ``weight * array`` in float64 per key. Float results are cast back to the
    reference's dtype; integer and boolean arrays (such as BatchNorm's
    ``num_batches_tracked``) are averaged in float64 and rounded to the nearest value.

    Attributes:
        rejected: contributor → the rejection of their update.
        contributors: accepted contributors, in the order they were added.
        total_weight: sum of the accepted weights.
    """

    def __init__(self, reference: Mapping[str, Array]) -> None:
        """Prepare an empty sum shaped like ``reference`` (only dtypes and shapes are kept).

        Raises:
            AggregationError: ``reference`` is empty, holds a value that is not a numpy
                array, or an array whose dtype cannot be averaged (not float/int/bool).
        """
        specs = _specs_of(reference)
        if not specs:
            raise AggregationError("the reference model has no arrays to aggregate")
        for key, (dtype, _) in specs.items():
            if dtype.kind not in SUPPORTED_KINDS:
                raise AggregationError(
                    f"reference {key!r} has dtype {dtype}, which cannot be averaged "
                    "(floats, integers and booleans can)"
                )
        self._specs = specs
        self._sums: dict[str, npt.NDArray[np.float64]] = {
            key: np.zeros(shape, dtype=np.float64) for key, (_, shape) in specs.items()
        }
        self.rejected: dict[str, UpdateRejectedError] = {}
        self.contributors: list[str] = []
        self.total_weight: float = 0.0

    def add(self, contributor: str, update: Mapping[str, Array], weight: float) -> None:
        """Validate ``update`` and fold ``weight * update`` into the running sum.

        On rejection nothing changes except ``rejected[contributor]``.

        Raises:
            AggregationError: ``contributor`` was already added (accepted or rejected).
            UpdateRejectedError: the update failed :func:`validate_update`, or the weighted
                sum would overflow float64 (``NON_FINITE``, or ``BAD_WEIGHT`` for the total
                weight).
        """
        if contributor in self.rejected or contributor in self.contributors:
            raise AggregationError(f"contributor {contributor!r} already sent an update")
        try:
            value = _check_update(update, self._specs, weight)
            total = self.total_weight + value
            if not math.isfinite(total):
                raise _reject(
                    UpdateRejectionReason.BAD_WEIGHT,
                    f"weight {weight!r} makes the total weight overflow",
                )
            sums = self._next_sums(update, value)
        except UpdateRejectedError as error:
            self.rejected[contributor] = error
            raise
        self._sums = sums
        self.total_weight = total
        self.contributors.append(contributor)

    def _next_sums(
        self, update: Mapping[str, Array], weight: float
    ) -> dict[str, npt.NDArray[np.float64]]:
        """The sums after adding ``update`` (new arrays: the current ones stay untouched)."""
        sums: dict[str, npt.NDArray[np.float64]] = {}
        with np.errstate(over="ignore", invalid="ignore"):
            for key, current in self._sums.items():
                new = current + weight * np.asarray(update[key], dtype=np.float64)
                if not np.isfinite(new).all():
                    raise _reject(
                        UpdateRejectionReason.NON_FINITE,
                        f"{key!r} times weight {weight!r} overflows the float64 sum",
                    )
                sums[key] = new
        return sums

    def result(self) -> dict[str, Array]:
        """The weighted mean: same keys, dtypes and shapes as the reference.

        Raises:
            AggregationError: no update has been accepted.
        """
        if not self.contributors:
            listing = ", ".join(
                f"{name} ({err.reason.value})" for name, err in self.rejected.items()
            )
            why = f"every update was rejected: {listing}" if listing else "no update was added"
            raise AggregationError(f"no aggregate can be formed: {why}")
        out: dict[str, Array] = {}
        for key, (dtype, _) in self._specs.items():
            mean = self._sums[key] / self.total_weight
            if dtype.kind == "f":
                out[key] = mean.astype(dtype)
            elif dtype.kind == "b":
                out[key] = mean >= 0.5
            else:
                out[key] = np.clip(np.rint(mean), *_float_limits(dtype)).astype(dtype)
        return out

    def statistics(self) -> dict[str, int | float]:
        """``{"accepted": int, "rejected": int, "total_weight": float}``."""
        return {
            "accepted": len(self.contributors),
            "rejected": len(self.rejected),
            "total_weight": self.total_weight,
        }


def fedavg(
    updates: Mapping[str, tuple[Mapping[str, Array], float]],
    reference: Mapping[str, Array],
) -> tuple[dict[str, Array], dict[str, UpdateRejectedError]]:
    """Average ``updates`` (contributor → (update, weight)) in sorted contributor order.

    Returns:
        ``(aggregate, rejected)``: the weighted mean and the rejected contributors.

    Raises:
        AggregationError: every update was rejected (or there were none), or the reference
            is unusable (see :class:`WeightedMean`).
    """
    mean = WeightedMean(reference)
    for contributor in sorted(updates):
        update, weight = updates[contributor]
        try:
            mean.add(contributor, update, weight)
        except UpdateRejectedError:
            continue
    return mean.result(), dict(mean.rejected)
