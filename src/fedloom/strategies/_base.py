"""The Strategy contract and its registry: one strategy, used by pods and the simulation.

A strategy says four things about a federated training round, and nothing about who
carries it (the pods' :class:`~fedloom.protocols.FedAvg` and the simulation engine both
drive the same object):

1. what each sampled participant is sent: the global arrays, plus
   :meth:`Strategy.participant_values` (JSON numbers, per participant);
2. the client side of local training: :meth:`Strategy.client_hook` gives a
   :class:`ClientHook` whose :meth:`~ClientHook.loss_term` is added to the local
   objective and whose :meth:`~ClientHook.aux` values travel back with the update;
3. the streaming fold of the updates: the one kernel
   (:class:`~fedloom.algorithms._aggregation.WeightedSum`, with its validation before any
   state is touched and its typed rejections), weighted by :meth:`Strategy.fold_weight`;
4. the server step: :meth:`Strategy.server_step` turns the folded mean into the next
   global model, with a state of named arrays that the checkpoint keeps (so a resumed run
   goes on exactly where the interrupted one was).

Strategies are frozen dataclasses whose fields are their JSON args, built on either side
from a :class:`StrategySpec` (name + args) through the closed registry
(:func:`register_strategy`, :func:`get_strategy`): nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import numpy as np
import numpy.typing as npt
import torch

from fedloom._registry import ArgsRegistry
from fedloom.errors import ConfigError

__all__ = [
    "STATE_PREFIX",
    "ClientHook",
    "Strategy",
    "StrategySpec",
    "get_strategy",
    "register_strategy",
    "registered_strategies",
    "split_state",
    "with_state",
]

Array = npt.NDArray[Any]
Values = Mapping[str, float]

STATE_PREFIX = "strategy::"
"""Checkpoint names of a strategy's server state: ``strategy::<state name>``."""


class ClientHook:
    """A strategy's part of one participant's local round (default: none at all)."""

    def loss_term(self, model: torch.nn.Module) -> torch.Tensor | None:
        """A scalar added to each batch's loss (None: the plain objective)."""
        return None

    def aux(self, model: torch.nn.Module) -> dict[str, float]:
        """Values sent back with the update, after training (default: none)."""
        return {}


NO_HOOK = ClientHook()


class Strategy(ABC):
    """Base of every strategy (see the module docstring).

    Subclasses are frozen dataclasses of JSON args, registered with :func:`register_strategy`.

    Constraints: every method is deterministic given its inputs (pods and the simulation
    must compute the same bits); :meth:`server_step` does not modify its arguments.
    """

    name: ClassVar[str]
    client_needs_global: ClassVar[bool] = False
    """Whether :meth:`client_hook` reads ``global_params`` (else it gets an empty map and
    the runtimes keep no copy of the global model)."""
    steps_on_server: ClassVar[bool] = False
    """Whether :meth:`server_step` is more than "the mean is the new model" (else the
    runtimes keep no copy of the previous global model)."""

    def to_args(self) -> dict[str, Any]:
        """The JSON args this strategy was built from."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def participant_values(self, round_index: int, participant: str) -> dict[str, float]:
        """Per-participant values sent with the global arrays (default: none)."""
        return {}

    def client_hook(self, global_params: Mapping[str, torch.Tensor], values: Values) -> ClientHook:
        """The participant's hook for one round; ``global_params`` by state-dict key."""
        return NO_HOOK

    def fold_weight(self, num_samples: float, aux: Values) -> float:
        """The weight of one update in the fold (default: its number of samples)."""
        return float(num_samples)

    def initial_state(self, global_arrays: Mapping[str, Array]) -> dict[str, Array]:
        """The server state before round 0 (default: none)."""
        return {}

    def server_step(
        self,
        previous: Mapping[str, Array],
        mean: Mapping[str, Array],
        state: Mapping[str, Array],
    ) -> tuple[Mapping[str, Array], dict[str, Array]]:
        """``(next global arrays, next state)`` from the round's start and folded mean.

        Default: the mean is the next model (FedAvg), the state is kept.
        """
        return mean, dict(state)


STRATEGIES: ArgsRegistry[Strategy] = ArgsRegistry("strategy")
"""The registered strategies.

``register_strategy`` is its class decorator, ``get_strategy(name, args)`` builds one from
JSON args (ConfigError otherwise), ``registered_strategies()`` lists the names.
"""

register_strategy = STRATEGIES.register
get_strategy = STRATEGIES.build
registered_strategies = STRATEGIES.names


def real_arg(
    strategy: str,
    name: str,
    value: object,
    *,
    low: float,
    low_open: bool,
    high: float = math.inf,
    high_open: bool = True,
) -> None:
    """Check a real-valued arg is in its interval.

    Raises:
        ConfigError: it is not a real number (bools are not), or outside the interval.
    """
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        number = float(value)  # type: ignore[arg-type]
        ok = (number > low if low_open else number >= low) and (
            number < high if high_open else number <= high
        )
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(
            f"strategy {strategy!r}: {name} must be a number in {interval}, got {value!r}"
        )


@dataclass(frozen=True)
class StrategySpec:
    """A strategy by registered name and JSON args: what task files and configs hold."""

    name: str = "fedavg"
    args: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> Strategy:
        """The strategy (see :func:`get_strategy` for what it raises)."""
        return get_strategy(self.name, self.args)

    @property
    def is_default(self) -> bool:
        """Whether this is plain FedAvg with no args (task files then leave it out)."""
        return self.name == "fedavg" and not self.args

    def to_config(self) -> dict[str, Any]:
        """The JSON-able ``{name, args}`` of this spec."""
        return {"name": self.name, "args": dict(self.args)}

    @classmethod
    def from_config(cls, config: object) -> Self:
        """``"name"`` or ``{"name": ..., "args": {...}}``, checked by building it.

        Raises:
            ConfigError: another shape, or a strategy :func:`get_strategy` refuses.
        """
        return cls(*STRATEGIES.read_spec(config))


def split_state(arrays: Mapping[str, Array]) -> tuple[dict[str, Array], dict[str, Array]]:
    """``(model arrays, strategy state)`` of a checkpoint (see :data:`STATE_PREFIX`)."""
    model = {k: v for k, v in arrays.items() if not k.startswith(STATE_PREFIX)}
    state = {k[len(STATE_PREFIX) :]: v for k, v in arrays.items() if k.startswith(STATE_PREFIX)}
    return model, state


def with_state(arrays: Mapping[str, Array], state: Mapping[str, Array]) -> dict[str, Array]:
    """A checkpoint's arrays: the model's, then the state under :data:`STATE_PREFIX`."""
    return dict(arrays) | {f"{STATE_PREFIX}{k}": np.asarray(v) for k, v in state.items()}
