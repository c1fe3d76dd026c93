"""FedProx (Li et al., 2020): local training with a proximal term towards the global model.

Each participant minimises ``loss(w) + mu / 2 * ||w - w_global||^2`` over the model's
trainable parameters, which keeps heterogeneous clients from drifting far from the global
model. The fold and the server step are FedAvg's; ``mu = 0`` is FedAvg exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from fedloom.strategies._base import (
    NO_HOOK,
    ClientHook,
    Strategy,
    Values,
    real_arg,
    register_strategy,
)

__all__ = ["FedProxStrategy", "ProximalHook"]


class ProximalHook(ClientHook):
    """``mu / 2 * sum ||w - w_global||^2`` over the parameters named in the global model."""

    def __init__(self, mu: float, global_params: Mapping[str, torch.Tensor]) -> None:
        self._mu = mu
        self._global = global_params
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def loss_term(self, model: torch.nn.Module) -> torch.Tensor:
        if self._pairs is None:  # once per round: the model's parameters stay the same objects
            self._pairs = [
                (param, self._global[key].to(param.device))
                for key, param in model.named_parameters()
                if param.requires_grad and key in self._global
            ]
        total = sum(
            (torch.sum(torch.square(param - start)) for param, start in self._pairs),
            start=torch.zeros((), dtype=self._pairs[0][0].dtype if self._pairs else None),
        )
        return total * (self._mu / 2.0)


@register_strategy
@dataclass(frozen=True)
class FedProxStrategy(Strategy):
    """Args: ``mu`` (>= 0, default 0.01), the weight of the proximal term.

    Raises (at construction):
        ConfigError: ``mu`` is not a finite number >= 0.
    """

    name = "fedprox"
    client_needs_global = True

    mu: float = 0.01

    def __post_init__(self) -> None:
        real_arg(self.name, "mu", self.mu, low=0.0, low_open=False)

    def client_hook(self, global_params: Mapping[str, torch.Tensor], values: Values) -> ClientHook:
        if self.mu == 0:
            return NO_HOOK
        return ProximalHook(float(self.mu), global_params)
