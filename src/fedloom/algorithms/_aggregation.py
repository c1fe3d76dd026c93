"""Weighted averaging of model updates (FedAvg), one update at a time.

Updates are named numpy arrays (``{"fc.weight": array, ...}``) plus a positive weight,
usually the number of samples a pod trained on. Each update is checked against a
*reference* (the global model the round started from) before it touches the running
sum; a bad update is rejected with an :class:`~fedloom.errors.UpdateRejectedError` naming
the reason, and the aggregate goes on without it. Memory is O(model): the running sum is
one float64 array per key, never a list of updates.

:class:`WeightedSum` is the one fold kernel of fedloom: the pods' :class:`WeightedMean`
and the simulation's ordered fold (:mod:`fedloom.simulation._fold`) both add through it,
with the same float64 operations (a rounded product, then a rounded sum, never a fused
multiply-add), so a federation and a simulation folding the same updates in the same
order give bit-identical parameters. :func:`all_finite` is the one finiteness check.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from fedloom.errors import AggregationError, UpdateRejectedError, UpdateRejectionReason

__all__ = ["WeightedMean", "WeightedSum", "all_finite", "fedavg", "validate_update"]

Array = npt.NDArray[Any]

#: dtype kinds that can be averaged: floats, signed/unsigned integers and booleans.
SUPPORTED_KINDS = frozenset("fiub")
_MAX_KEYS_IN_DETAIL = 5
_CHUNK = 1 << 16  # elements converted to float64 at a time: 512 KiB of scratch stays in L2

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
        if dtype.kind == "f" and not _finite(array):
            raise _reject(UpdateRejectionReason.NON_FINITE, f"{key!r} contains NaN or Inf")
    return value


def _finite(array: Array) -> bool:
    # one summing pass (a finite sum proves every value finite); the exact, slower check
    # only when the sum is not finite, which may also be an overflow of the sum
    with np.errstate(over="ignore", invalid="ignore"):
        return math.isfinite(float(np.sum(array))) or bool(np.isfinite(array).all())


def all_finite(arrays: Mapping[str, Any]) -> bool:
    """True when no float array of ``arrays`` holds NaN or Inf.

    Values are numpy arrays or CPU tensors (read without a copy). This is the check of
    every update, on a pod's modeller and in a simulation worker alike.
    """
    for value in arrays.values():
        array = np.asarray(value)
        if array.dtype.kind == "f" and not _finite(array):
            return False
    return True


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


def _flat(value: Any) -> Array:
    """A 1-D view of an array or CPU tensor (a copy only if it is not contiguous)."""
    return np.asarray(value).reshape(-1)


def _dtype_range(dtype: np.dtype[Any]) -> float | None:
    """An upper bound of ``|value|`` for every value of ``dtype``; None for float64.

    float64 is the sum's own range, so its bound is the largest magnitude present
    (:func:`_largest`).
    """
    if dtype.kind == "b":
        return 1.0
    if dtype.kind in "iu":
        limits = np.iinfo(dtype)
        return float(max(-int(limits.min), int(limits.max)))
    if dtype.itemsize < 8:
        return float(np.finfo(dtype).max)
    return None


def _largest(flat: Array, scratch: npt.NDArray[np.float64]) -> float:
    """The largest ``|value|`` in the float64 array ``flat``."""
    largest = 0.0
    for start in range(0, flat.size, len(scratch)):
        part = flat[start : start + len(scratch)]
        np.abs(part, out=scratch[: part.size])
        largest = max(largest, float(scratch[: part.size].max()))
    return largest


class WeightedSum:
    """Float64 sums of ``weight * update`` per name: the fold kernel (module docstring).

    Names map to (dtype, shape); updates are numpy arrays or CPU tensors of those sizes
    (unchecked here: see :func:`validate_update`). Memory: one float64 array per name and
    a scratch of at most 512 KiB, reused by :meth:`reset` from round to round.

    Attributes:
        total_weight: sum of the added weights.
        count: how many updates were added.
    """

    def __init__(self, specs: Mapping[str, tuple[np.dtype[Any], tuple[int, ...]]]) -> None:
        self._specs = dict(specs)
        sizes = {name: math.prod(shape) for name, (_, shape) in self._specs.items()}
        self._sums = {name: np.empty(size, dtype=np.float64) for name, size in sizes.items()}
        self._scratch = np.empty(max(1, min(_CHUNK, max(sizes.values(), default=1))))
        self._bounds = dict.fromkeys(self._specs, 0.0)
        self._ranges = {name: _dtype_range(np.dtype(dtype)) for name, (dtype, _) in specs.items()}
        self.total_weight = 0.0
        self.count = 0

    def fits(self, specs: Mapping[str, tuple[np.dtype[Any], tuple[int, ...]]]) -> bool:
        """Whether these sums can fold updates of ``specs`` (same names and sizes)."""
        return {n: math.prod(s) for n, (_, s) in specs.items()} == {
            n: total.size for n, total in self._sums.items()
        }

    def reset(self) -> None:
        """Forget every update (the buffers are kept; the next add overwrites them)."""
        self._bounds = dict.fromkeys(self._specs, 0.0)
        self.total_weight = 0.0
        self.count = 0

    def add(self, update: Mapping[str, Any], weight: float) -> None:
        """Fold ``weight * update`` in; nothing changes when it raises.

        Raises:
            UpdateRejectedError: ``BAD_WEIGHT`` when the total weight would overflow,
                ``NON_FINITE`` when the weighted sum could overflow float64.
        """
        total = self.total_weight + weight
        if not math.isfinite(total):
            raise _reject(
                UpdateRejectionReason.BAD_WEIGHT,
                f"weight {weight!r} makes the total weight overflow",
            )
        flats = {name: _flat(update[name]) for name in self._sums}
        bounds: dict[str, float] = {}
        for name, flat in flats.items():
            magnitude = self._ranges[name]
            if magnitude is None:
                magnitude = _largest(flat, self._scratch)
            bounds[name] = self._bounds[name] + weight * magnitude
            if not math.isfinite(bounds[name]):
                raise _reject(
                    UpdateRejectionReason.NON_FINITE,
                    f"{name!r} times weight {weight!r} overflows the float64 sum",
                )
        first = self.count == 0
        for name, flat in flats.items():
            self._fold(self._sums[name], flat, weight, first=first)
        self._bounds = bounds
        self.total_weight = total
        self.count += 1

    def _fold(
        self, total: npt.NDArray[np.float64], flat: Array, weight: float, *, first: bool
    ) -> None:
        # chunks keep the float64 scratch small and in cache
        scratch = self._scratch
        for start in range(0, total.size, len(scratch)):
            stop = min(start + len(scratch), total.size)
            if first:  # the value 0 + w*u gives, without zeroing the sums first
                np.multiply(flat[start:stop], weight, out=total[start:stop], dtype=np.float64)
                continue
            part = scratch[: stop - start]
            np.multiply(flat[start:stop], weight, out=part, dtype=np.float64)
            np.add(total[start:stop], part, out=total[start:stop])

    def mean_into(self, target: Mapping[str, Any]) -> None:
        """Write the weighted mean into ``target``: arrays or CPU tensors per name.

        ``target`` holds the specs' dtypes. Floats are rounded to their dtype; integers to
        the nearest value in range; booleans are true from 0.5. The sums stay as they are.

        Raises:
            AggregationError: no update was added.
        """
        if not self.count:
            raise AggregationError("no update was added")
        scratch = self._scratch
        for name, (dtype, _) in self._specs.items():
            total, out = self._sums[name], _flat(target[name])
            for start in range(0, total.size, len(scratch)):
                stop = min(start + len(scratch), total.size)
                mean = scratch[: stop - start]
                np.divide(total[start:stop], self.total_weight, out=mean)
                if dtype.kind == "f":
                    np.copyto(out[start:stop], mean, casting="same_kind")
                elif dtype.kind == "b":
                    np.greater_equal(mean, 0.5, out=out[start:stop])
                else:
                    np.clip(np.rint(mean, out=mean), *_float_limits(dtype), out=mean)
                    np.copyto(out[start:stop], mean, casting="unsafe")


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
        self._sum = WeightedSum(specs)
        self.rejected: dict[str, UpdateRejectedError] = {}
        self.contributors: list[str] = []

    @property
    def total_weight(self) -> float:
        """Sum of the accepted weights."""
        return self._sum.total_weight

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
            self._sum.add(update, _check_update(update, self._specs, weight))
        except UpdateRejectedError as error:
            self.rejected[contributor] = error
            raise
        self.contributors.append(contributor)

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
        out = {key: np.empty(shape, dtype=dtype) for key, (dtype, shape) in self._specs.items()}
        self._sum.mean_into(out)
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
