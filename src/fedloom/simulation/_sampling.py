"""Which virtual clients take part in a round.

- ``all``: every client, every round;
- ``random``: ``ceil(fraction x clients)`` clients drawn without replacement, from a
  generator seeded by the simulation seed and the round (the same on every machine);
- ``sequential``: a window of ``per_round`` clients that moves on each round:
  round ``r`` takes clients ``r·k .. r·k + k - 1`` (mod the number of clients).

The chosen clients are returned sorted: that is the order their updates are folded in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedloom.algorithms.ml import round_seed
from fedloom.errors import ConfigError

__all__ = ["SAMPLING_KINDS", "Sampling"]

SAMPLING_KINDS = ("all", "random", "sequential")


@dataclass(frozen=True)
class Sampling:
    """How clients are chosen each round (see the module docstring)."""

    kind: str = "all"
    fraction: float = 1.0
    per_round: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in SAMPLING_KINDS:
            raise ConfigError(
                f"sampling kind must be one of {', '.join(SAMPLING_KINDS)}, got {self.kind!r}"
            )
        fraction = self.fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise ConfigError(f"sampling fraction must be a number, got {fraction!r}")
        if not 0.0 < fraction <= 1.0:
            raise ConfigError(f"sampling fraction must be in (0, 1], got {fraction}")
        per_round = self.per_round
        if per_round is not None and (
            isinstance(per_round, bool) or not isinstance(per_round, int) or per_round < 1
        ):
            raise ConfigError(f"sampling per_round must be an int >= 1, got {per_round!r}")
        if self.kind == "sequential" and per_round is None:
            raise ConfigError("sequential sampling needs per_round (clients per round)")

    def clients(self, round_index: int, num_clients: int, seed: int) -> list[int]:
        """The clients of round ``round_index``, sorted."""
        if self.kind == "all":
            return list(range(num_clients))
        if self.kind == "sequential":
            assert self.per_round is not None
            count = min(self.per_round, num_clients)
            start = round_index * count
            return sorted({(start + i) % num_clients for i in range(count)})
        count = self.per_round or math.ceil(self.fraction * num_clients)
        count = max(1, min(count, num_clients))
        rng = np.random.default_rng(round_seed(seed, "sampling", round_index))
        return sorted(int(c) for c in rng.choice(num_clients, size=count, replace=False))

    def to_config(self) -> dict[str, Any]:
        """The JSON-able config this sampling is rebuilt from."""
        config: dict[str, Any] = {"kind": self.kind, "fraction": self.fraction}
        if self.per_round is not None:
            config["per_round"] = self.per_round
        return config

    @classmethod
    def from_config(cls, config: object) -> Sampling:
        """From ``{"kind": ..., "fraction": ..., "per_round": ...}`` (kind required).

        Raises:
            ConfigError: not a mapping, unknown keys or bad values.
        """
        if not isinstance(config, Mapping):
            raise ConfigError(f"sampling must be a table, got {config!r}")
        unknown = sorted(set(config) - {"kind", "fraction", "per_round"})
        if unknown:
            raise ConfigError(f"unknown sampling keys {unknown} (known: kind, fraction, per_round)")
        return cls(
            kind=config.get("kind", "all"),
            fraction=config.get("fraction", 1.0),
            per_round=config.get("per_round"),
        )
