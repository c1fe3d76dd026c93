"""Streaming FedAvg over flat parameter blocks, folded in a fixed client order.

Updates arrive in whatever order workers finish; :class:`OrderedFold` adds each one into
a float64 running sum as soon as every client before it in the round's order has been
added (or skipped), so the sum is computed in the same order for any number of workers:
the result is bit-identical. An update waiting for its turn stays in its worker's slot;
nothing is copied, and memory stays O(model x slots), never O(clients x model).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from fedloom.errors import AggregationError

__all__ = ["FoldBuffers", "OrderedFold"]

_CHUNK = 1 << 20  # elements converted to float64 at a time (8 MiB of scratch)


@dataclass(frozen=True)
class FoldBuffers:
    """A fold's float64 sums and scratch, kept from round to round."""

    sums: dict[str, torch.Tensor]
    scratch: torch.Tensor

    @classmethod
    def like(cls, groups: Mapping[str, torch.Tensor]) -> FoldBuffers:
        largest = max((flat.numel() for flat in groups.values()), default=0)
        return cls(
            sums={
                name: torch.empty(flat.numel(), dtype=torch.float64)
                for name, flat in groups.items()
            },
            scratch=torch.empty(min(_CHUNK, largest), dtype=torch.float64),
        )

    def sizes(self) -> dict[str, int]:
        return {name: total.numel() for name, total in self.sums.items()}


@dataclass
class _Waiting:
    flats: Mapping[str, torch.Tensor]
    weight: float


class OrderedFold:
    """Weighted mean of flat blocks, added in ``order`` (see the module docstring)."""

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
        self._dtypes = {name: flat.dtype for name, flat in groups.items()}
        buffers = buffers if buffers is not None else FoldBuffers.like(groups)
        if buffers.sizes() != {name: flat.numel() for name, flat in groups.items()}:
            raise AggregationError("the reused fold buffers do not fit the groups")
        self._sums = buffers.sums  # written, not read, by the first update: never zeroed
        self._scratch = buffers.scratch
        self._next = 0
        self._waiting: dict[int, _Waiting | None] = {}
        self.total_weight = 0.0
        self.folded: list[int] = []

    @property
    def done(self) -> bool:
        """Every client of the order has been added or skipped."""
        return self._next == len(self._order)

    @property
    def pending(self) -> list[int]:
        """Clients not yet added or skipped, in order."""
        return self._order[self._next :]

    def offer(self, client: int, flats: Mapping[str, torch.Tensor], weight: float) -> list[int]:
        """Hand in ``client``'s update; return the clients whose updates were added now.

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
        """Leave ``client`` out (failed or dropped); return the clients added now."""
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
        for name, total in self._sums.items():
            dtype = self._dtypes[name]
            # same-dtype steps: torch's mixed-dtype kernels are several times slower
            mean = total.div_(self.total_weight)
            if dtype.is_floating_point:
                target[name].copy_(mean)
            elif dtype == torch.bool:
                target[name].copy_(mean >= 0.5)
            else:
                info = torch.iinfo(dtype)
                target[name].copy_(mean.round_().clamp_(info.min, info.max))

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
            first = not self.folded
            for name, total in self._sums.items():
                self._add(total, waiting.flats[name], waiting.weight, first=first)
            self.total_weight += waiting.weight
            self.folded.append(client)
            added.append(client)
        return added

    def _add(
        self, total: torch.Tensor, update: torch.Tensor, weight: float, *, first: bool
    ) -> None:
        # chunks keep the float64 scratch small and in cache
        for start in range(0, total.numel(), _CHUNK):
            stop = min(start + _CHUNK, total.numel())
            scratch = self._scratch[: stop - start]
            scratch.copy_(update[start:stop])
            if first:  # the same value 0 + w*u would give, without zeroing the sums first
                torch.mul(scratch, weight, out=total[start:stop])
            else:
                total[start:stop].add_(scratch, alpha=weight)
