"""``clip``: bound each worker's contribution by the L2 norm of its update's change.

The change ``update - global`` over every floating-point array, taken as one vector, is
scaled down to norm ``max_norm`` when it is longer; a shorter one is released as it is,
bit for bit. Integer and boolean buffers (BatchNorm's ``num_batches_tracked``) are counts,
not directions: they are neither measured nor changed. The norm and the scaled values are
computed in float64 and rounded once to each array's dtype, so a pod and the simulation
release the same bits. Clipping is the first half of differentially private FedAvg
(McMahan et al., 2018); it needs no inverse in the fold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from fedloom.errors import ConfigError, DataError
from fedloom.privacy._base import ReleaseContext, UpdateTransform, register_transform

__all__ = ["ClipTransform", "update_norm"]

Array = npt.NDArray[Any]


@register_transform
@dataclass(frozen=True)
class ClipTransform(UpdateTransform):
    """L2-norm clipping of the update's change (see the module docstring).

    Raises (at construction):
        ConfigError: ``max_norm`` is not a finite number > 0.
    """

    name: ClassVar[str] = "clip"
    needs_global: ClassVar[bool] = True

    max_norm: float

    def __post_init__(self) -> None:
        value = self.max_norm
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ConfigError(
                f"privacy transform 'clip': max_norm must be a finite number > 0, got {value!r}"
            )

    def release(
        self,
        update: MutableMapping[str, Array],
        global_arrays: Mapping[str, Array],
        context: ReleaseContext,
    ) -> MutableMapping[str, Array]:
        """Scale the change down to ``max_norm`` in place, if it is longer.

        An update whose norm is not finite is released as it is (the fold rejects it).

        Raises:
            DataError: a float array of ``update`` has no array of its shape in
                ``global_arrays``.
        """
        norm = update_norm(update, global_arrays)
        if not (math.isfinite(norm) and norm > self.max_norm):
            return update
        scale = self.max_norm / norm
        for key, array in _floats(update):
            start = np.asarray(global_arrays[key], dtype=np.float64)
            change = np.subtract(array, start, dtype=np.float64)
            change *= scale
            change += start
            np.copyto(array, change, casting="same_kind")
        return update


def update_norm(update: Mapping[str, Array], global_arrays: Mapping[str, Array]) -> float:
    """The L2 norm of ``update - global`` over the float arrays, in float64.

    Raises:
        DataError: a float array of ``update`` has no array of its shape in
            ``global_arrays``.
    """
    squares = 0.0
    for key, array in _floats(update):
        start = global_arrays.get(key)
        if start is None or np.shape(start) != array.shape:
            found = "nothing" if start is None else f"shape {list(np.shape(start))}"
            raise DataError(
                f"clip: update {key!r} has shape {list(array.shape)}, the global model "
                f"holds {found} there"
            )
        change = np.subtract(array, start, dtype=np.float64).ravel()
        # numpy's own pairwise sum, not BLAS: its order does not depend on thread counts
        squares += float(np.square(change, out=change).sum())
    return math.sqrt(squares)


def _floats(update: Mapping[str, Array]) -> list[tuple[str, Array]]:
    return [(key, array) for key, array in update.items() if array.dtype.kind == "f"]
