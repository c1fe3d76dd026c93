"""What a simulation runs: :class:`SimulationConfig` and :class:`ClientResources`, checked.

Every field is checked when the config is made, so that a wrong value is one
:class:`~fedloom.errors.ConfigError` here rather than an ``AttributeError`` deep inside a
run. The TOML file that ``fedloom sim`` reads is turned into these in
:mod:`fedloom.simulation._config`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedloom.algorithms.ml import ModelSpec, TrainingConfig
from fedloom.errors import ConfigError
from fedloom.privacy import TransformSpec, check_specs
from fedloom.scheduler import ResourceBudget, ResourceEstimate, check_retry_rules
from fedloom.simulation._backend import START_METHODS
from fedloom.simulation._client import RunnerPlan, with_overrides
from fedloom.simulation._data import DataSpec
from fedloom.simulation._sampling import Sampling
from fedloom.strategies import StrategySpec

__all__ = ["BACKENDS", "ClientResources", "SimulationConfig"]

BACKENDS = ("process", "thread", "ray")


@dataclass(frozen=True)
class ClientResources:
    """What one client's round needs, for admission (and for Ray's placement)."""

    estimate: ResourceEstimate = field(default_factory=ResourceEstimate)
    budget: ResourceBudget | None = None
    max_retries: int = 3
    growth: float = 1.5

    def __post_init__(self) -> None:
        if not isinstance(self.estimate, ResourceEstimate):
            raise ConfigError(
                f"resources estimate must be a ResourceEstimate, got {self.estimate!r}"
            )
        if self.budget is not None and not isinstance(self.budget, ResourceBudget):
            raise ConfigError(f"resources budget must be a ResourceBudget, got {self.budget!r}")
        check_retry_rules(self.max_retries, self.growth)


@dataclass(frozen=True)
class SimulationConfig:
    """A simulation: model, client data, rounds, sampling, training, strategy, workers."""

    model: ModelSpec
    data: DataSpec
    rounds: int = 3
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sampling: Sampling = field(default_factory=Sampling)
    seed: int = 0
    validation_fraction: float = 0.0
    num_parallels: int = 2
    backend: str = "process"
    device: str = "cpu"
    device_count: int = 1
    client_overrides: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    resources: ClientResources | None = None
    round_timeout: float | None = None
    torch_threads: int = 1
    plugins: tuple[str, ...] = ()
    start_method: str = "auto"
    strategy: StrategySpec = field(default_factory=StrategySpec)
    privacy: tuple[TransformSpec, ...] = ()

    def __post_init__(self) -> None:
        for name in ("rounds", "num_parallels", "device_count", "torch_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"simulation {name} must be an int >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"simulation seed must be an int >= 0, got {self.seed!r}")
        _check_types(self)
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"unknown simulation backend {self.backend!r}; known: {', '.join(BACKENDS)}"
            )
        if not 0.0 <= self.validation_fraction < 0.9:
            raise ConfigError(
                f"validation_fraction must be in [0, 0.9), got {self.validation_fraction}"
            )
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.start_method not in START_METHODS:
            raise ConfigError(
                f"start_method must be one of {', '.join(START_METHODS)}, got {self.start_method!r}"
            )
        if self.round_timeout is not None and not (
            _is_number(self.round_timeout) and 0 < self.round_timeout < math.inf
        ):
            raise ConfigError(
                f"round_timeout must be a number of seconds > 0, got {self.round_timeout!r}"
            )

    def runner_plan(self) -> RunnerPlan:
        """What each virtual client's runner needs of this config, for the backend's plan."""
        return RunnerPlan(
            model=self.model,
            data=self.data,
            training=self.training,
            seed=self.seed,
            validation_fraction=self.validation_fraction,
            torch_threads=self.torch_threads,
            plugins=self.plugins,
            strategy=self.strategy,
            privacy=self.privacy,
        )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_FIELD_TYPES: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("model", ModelSpec),
    ("data", DataSpec),
    ("training", TrainingConfig),
    ("sampling", Sampling),
    ("resources", (ClientResources, type(None))),
    ("backend", str),
    ("device", str),
    ("start_method", str),
    ("client_overrides", Mapping),
    ("plugins", (tuple, list)),
    ("strategy", StrategySpec),
)


def _check_types(config: SimulationConfig) -> None:
    """Wrong types are ConfigErrors here, not AttributeErrors deep inside a run."""
    for name, kind in _FIELD_TYPES:
        value = getattr(config, name)
        if not isinstance(value, kind):
            raise ConfigError(f"simulation {name} has the wrong type: {value!r}")
    config.strategy.build()
    object.__setattr__(config, "privacy", check_specs("simulation", config.privacy))
    if not all(isinstance(module, str) for module in config.plugins):
        raise ConfigError(f"simulation plugins must be module names, got {config.plugins!r}")
    object.__setattr__(config, "plugins", tuple(config.plugins))  # frozen: stays hashable
    for client, overrides in config.client_overrides.items():
        if isinstance(client, bool) or not isinstance(client, int) or client < 0:
            raise ConfigError(f"client overrides are keyed by client number, got {client!r}")
        if not isinstance(overrides, Mapping):
            raise ConfigError(f"client {client}'s overrides must be a mapping, got {overrides!r}")
        try:
            with_overrides(config.training, overrides)
        except ConfigError as exc:
            raise ConfigError(f"client {client}'s overrides: {exc}") from exc
    if not _is_number(config.validation_fraction):
        raise ConfigError(
            f"validation_fraction must be a number, got {config.validation_fraction!r}"
        )
