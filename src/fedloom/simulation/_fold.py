"""The simulation's way of feeding the streaming fold: updates added in a fixed client order.

Updates arrive in whatever order workers finish; :class:`OrderedFold` adds each one into
the fold kernel (:class:`~fedloom.algorithms._aggregation.WeightedSum`, the one the pods'
:class:`~fedloom.algorithms._aggregation.WeightedMean` uses) as soon as every client
before it in the round's order has been added (or skipped), so the sum is computed in the
same order for any number of workers: the result is bit-identical, and it is the one a
federation of pods named ``client-<i>`` gets. An update waiting for its turn stays in
its worker's slot; nothing is copied, and memory stays O(model x slots), never
O(clients x model).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedloom.algorithms._aggregation import WeightedSum
from fedloom.errors import AggregationError, UpdateRejectedError

__all__ = ["FoldBuffers", "OrderedFold"]


def _specs(groups: Mapping[str, torch.Tensor]) -> dict[str, tuple[np.dtype[Any], tuple[int]]]:
    return {
        name: (np.dtype(str(torch.empty(0, dtype=flat.dtype).numpy().dtype)), (flat.numel(),))
        for name, flat in groups.items()
    }


@dataclass(frozen=True)
class FoldBuffers:
    """A fold's float64 sums and scratch, kept from round to round."""

    sums: WeightedSum

    @classmethod
    def like(cls, groups: Mapping[str, torch.Tensor]) -> FoldBuffers:
        return cls(WeightedSum(_specs(groups)))


@dataclass
class _Waiting:
    flats: Mapping[str, torch.Tensor]
    weight: float


class OrderedFold:
    """Weighted mean of flat blocks, added in ``order`` (see the module docstring).

    Attributes:
        folded: clients added, in order.
        rejected: clients whose update the kernel refused (its weighted sum would
            overflow float64): left out like a skipped client.
    """

    def __init__(
        self,
        groups: Mapping[str, torch.Tensor],
        order: Iterable[int],
        *,
        buffers: FoldBuffers | None = None,
    ) -> None:
        """``groups``: name → a flat tensor shaped like each update's (dtype, length).

        ``buffers`` from an earlier fold of the same shapes are reused instead of
        allocated, so a new round does not wait for fresh pages.

        Raises:
            AggregationError: ``order`` names a client twice, or ``buffers`` do not fit.
        """
        self._order = list(order)
        if len(set(self._order)) != len(self._order):
            raise AggregationError("the fold order names a client twice")
        buffers = buffers if buffers is not None else FoldBuffers.like(groups)
        if not buffers.sums.fits(_specs(groups)):
            raise AggregationError("the reused fold buffers do not fit the groups")
        self._sum = buffers.sums
        self._sum.reset()
        self._next = 0
        self._waiting: dict[int, _Waiting | None] = {}
        self.folded: list[int] = []
        self.rejected: dict[int, UpdateRejectedError] = {}

    @property
    def total_weight(self) -> float:
        return self._sum.total_weight

    @property
    def done(self) -> bool:
        """Every client of the order has been added or skipped."""
        return self._next == len(self._order)

    @property
    def pending(self) -> list[int]:
        """Clients not yet added or skipped, in order."""
        return self._order[self._next :]

    def offer(self, client: int, flats: Mapping[str, torch.Tensor], weight: float) -> list[int]:
        """Hand in ``client``'s update; return the clients whose updates are done with now.

        Those are added, or rejected into :attr:`rejected`.

        The caller keeps ``flats`` untouched until ``client`` is in a returned list.

        Raises:
            AggregationError: ``client`` is not in the order or was handed in before, or
                the weight is not finite and > 0.
        """
        if not (math.isfinite(weight) and weight > 0):
            raise AggregationError(f"client {client}: weight must be finite and > 0, got {weight}")
        self._admit(client, _Waiting(flats, float(weight)))
        return self._drain()

    def skip(self, client: int) -> list[int]:
        """Leave ``client`` out (failed or dropped); return the clients done with now."""
        self._admit(client, None)
        return self._drain()

    def result_into(self, target: Mapping[str, torch.Tensor]) -> None:
        """Write the weighted mean into ``target`` (flat tensors of the update dtypes).

        Raises:
            AggregationError: clients are still pending, or none was added.
        """
        if not self.done:
            raise AggregationError(f"the fold still waits for clients {self.pending[:5]}")
        if not self.folded:
            raise AggregationError("no update was added: every client failed or was skipped")
        self._sum.mean_into(target)

    def _admit(self, client: int, waiting: _Waiting | None) -> None:
        if client not in self._order[self._next :] or client in self._waiting:
            raise AggregationError(f"client {client} is not awaited by this fold")
        self._waiting[client] = waiting

    def _drain(self) -> list[int]:
        added: list[int] = []
        while self._next < len(self._order) and self._order[self._next] in self._waiting:
            client = self._order[self._next]
            waiting = self._waiting.pop(client)
            self._next += 1
            if waiting is None:
                continue
            try:
                self._sum.add(waiting.flats, waiting.weight)
            except UpdateRejectedError as error:
                self.rejected[client] = error
            else:
                self.folded.append(client)
            added.append(client)
        return added
