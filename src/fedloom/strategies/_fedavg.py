"""FedAvg (McMahan et al., 2017): the weighted mean of the updates is the next model."""

from __future__ import annotations

from dataclasses import dataclass

from fedloom.strategies._base import Strategy, register_strategy

__all__ = ["FedAvgStrategy"]


@register_strategy
@dataclass(frozen=True)
class FedAvgStrategy(Strategy):
    """FedAvg: every default of :class:`~fedloom.strategies.Strategy`.

    No client hook, weights are sample counts, no server state. Takes no args.
    """

    name = "fedavg"
