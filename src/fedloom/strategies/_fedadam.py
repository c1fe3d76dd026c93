"""FedAdam (Reddi et al., 2021, "Adaptive Federated Optimization", Algorithm 2).

The clients train as in FedAvg; the server treats the change of the weighted mean from
the round's global model as a pseudo-gradient ``delta`` and applies Adam to it::

    m = beta_1 * m + (1 - beta_1) * delta
    v = beta_2 * v + (1 - beta_2) * delta ** 2
    x = x + eta * m / (sqrt(v) + tau)

without bias correction, as in the paper. ``m``, ``v`` (float64, per float array) and the
step count are the server state: they go into every round's checkpoint, so a resumed run
computes bit for bit what the uninterrupted one would have. Integer and boolean arrays
(BatchNorm's ``num_batches_tracked``) take the mean, as in FedAvg.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedloom.strategies._base import Strategy, real_arg, register_strategy

__all__ = ["FedAdamStrategy"]

Array = npt.NDArray[Any]
STEPS = "steps"


@register_strategy
@dataclass(frozen=True)
class FedAdamStrategy(Strategy):
    """FedAdam (Reddi et al., 2021): the server applies Adam to the round's pseudo-gradient.

    Args: ``eta`` (server learning rate, > 0), ``beta_1`` and ``beta_2`` (in [0, 1)),
    ``tau`` (adaptivity, > 0); defaults as the paper's experiments: 0.01, 0.9, 0.99, 1e-3.

    Raises (at construction):
        ConfigError: an arg outside its range.
    """

    name = "fedadam"
    steps_on_server = True

    eta: float = 1e-2
    beta_1: float = 0.9
    beta_2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        real_arg(self.name, "eta", self.eta, low=0.0, low_open=True)
        real_arg(self.name, "beta_1", self.beta_1, low=0.0, low_open=False, high=1.0)
        real_arg(self.name, "beta_2", self.beta_2, low=0.0, low_open=False, high=1.0)
        real_arg(self.name, "tau", self.tau, low=0.0, low_open=True)

    def initial_state(self, global_arrays: Mapping[str, Array]) -> dict[str, Array]:
        state: dict[str, Array] = {STEPS: np.zeros((), dtype=np.int64)}
        for key, array in global_arrays.items():
            if array.dtype.kind == "f":
                state[f"m/{key}"] = np.zeros(array.shape, dtype=np.float64)
                state[f"v/{key}"] = np.zeros(array.shape, dtype=np.float64)
        return state

    def server_step(
        self,
        previous: Mapping[str, Array],
        mean: Mapping[str, Array],
        state: Mapping[str, Array],
    ) -> tuple[dict[str, Array], dict[str, Array]]:
        """One Adam step on ``mean - previous`` (see the module docstring)."""
        if not state:
            state = self.initial_state(previous)
        following: dict[str, Array] = {}
        new_state: dict[str, Array] = {STEPS: np.asarray(state[STEPS]) + 1}
        for key, start in previous.items():
            if start.dtype.kind != "f":
                following[key] = np.array(mean[key], copy=True)
                continue
            x = np.asarray(start, dtype=np.float64)
            delta = np.asarray(mean[key], dtype=np.float64) - x
            m = self.beta_1 * state[f"m/{key}"] + (1.0 - self.beta_1) * delta
            v = self.beta_2 * state[f"v/{key}"] + (1.0 - self.beta_2) * np.square(delta)
            following[key] = (x + self.eta * m / (np.sqrt(v) + self.tau)).astype(start.dtype)
            new_state[f"m/{key}"], new_state[f"v/{key}"] = m, v
        return following, new_state
