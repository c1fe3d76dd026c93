"""Simulation config files (TOML), as read by ``fedloom sim``.

```toml
[simulation]
rounds = 5
seed = 0
backend = "process"        # process | thread | ray
num_parallels = 2
device = "cpu"             # or "cuda" with device_count = N
validation_fraction = 0.2
start_method = "auto"      # process backend: auto (fork when safe) | spawn | forkserver | fork
plugins = []               # modules that register models or client data
ray_address = "ray://head:10001"   # backend = "ray" only; default: a local Ray

[model]                    # a registered model and its config
name = "mlp"
config = { in_features = 64, hidden = [32], out_features = 10 }

[data]                     # registered client data: synthetic | partitioned | digits
name = "digits"
clients = 20
partition = "dirichlet"
alpha = 0.5

[training]                 # TrainingConfig
epochs = 1
batch_size = 16
learning_rate = 0.05

[sampling]                 # all | random (fraction or per_round) | sequential (per_round)
kind = "random"
fraction = 0.5

[resources]                # optional: admission by the scheduler
memory = "300 MB"          # per client
cpus = 1
budget_memory = "8 GiB"    # at most this much for all clients at once

[clients.3]                # per-client training overrides
learning_rate = 0.01
```
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedloom.algorithms.ml import ModelSpec, TrainingConfig
from fedloom.errors import ConfigError
from fedloom.scheduler import ResourceBudget, ResourceEstimate
from fedloom.simulation.data import DataSpec
from fedloom.simulation.engine import ClientResources, SimulationConfig
from fedloom.simulation.sampling import Sampling

__all__ = ["SimulationFile", "load_simulation_file", "simulation_from_mapping"]

_SECTIONS = {"simulation", "model", "data", "training", "sampling", "resources", "clients"}
_SIMULATION_KEYS = {
    "rounds", "seed", "backend", "num_parallels", "device", "device_count",
    "validation_fraction", "start_method", "plugins", "round_timeout", "torch_threads",
    "ray_address",
}
_RESOURCE_KEYS = {
    "memory", "gpu_memory", "cpus", "budget_memory", "budget_cpus", "budget_device_memory",
    "max_retries", "growth",
}


@dataclass(frozen=True)
class SimulationFile:
    """A parsed simulation file: the config plus backend options."""

    config: SimulationConfig
    ray_address: str | None = None


def load_simulation_file(path: str | Path) -> SimulationFile:
    """Read and check a simulation TOML file.

    Raises:
        ConfigError: the file is missing, not TOML, or any section is wrong (the
            message names the section and key).
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read simulation file {file}: {exc.strerror}") from exc
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"simulation file {file} is not valid TOML: {exc}") from exc
    return simulation_from_mapping(raw, where=str(file))


def simulation_from_mapping(raw: Mapping[str, Any], *, where: str = "config") -> SimulationFile:
    """Build a :class:`SimulationFile` from the TOML structure.

    Raises:
        ConfigError: unknown sections or keys, missing ``[model]``/``[data]``, bad values.
    """
    unknown = sorted(set(raw) - _SECTIONS)
    if unknown:
        raise ConfigError(f"{where}: unknown sections {unknown} (known: {sorted(_SECTIONS)})")
    for required in ("model", "data"):
        if not isinstance(raw.get(required), Mapping):
            raise ConfigError(f"{where}: a [{required}] section is required")
    simulation = _table(raw, "simulation", where)
    _known(simulation, _SIMULATION_KEYS, "simulation", where)
    options = {k: v for k, v in simulation.items() if k not in {"ray_address", "plugins"}}
    plugins = simulation.get("plugins", [])
    if not isinstance(plugins, list) or not all(isinstance(m, str) for m in plugins):
        raise ConfigError(f"{where}: [simulation] plugins must be a list of module names")
    ray_address = simulation.get("ray_address")
    if ray_address is not None and not isinstance(ray_address, str):
        raise ConfigError(f"{where}: [simulation] ray_address must be a string")
    try:
        config = SimulationConfig(
            model=ModelSpec.from_config(dict(raw["model"])),
            data=DataSpec.from_config(dict(raw["data"])),
            training=TrainingConfig.from_config(_table(raw, "training", where)),
            sampling=Sampling.from_config(_table(raw, "sampling", where) or {"kind": "all"}),
            resources=_resources(_table(raw, "resources", where), where),
            client_overrides=_clients(_table(raw, "clients", where), where),
            plugins=tuple(plugins),
            **options,
        )
    except TypeError as exc:  # a value of the wrong type reached a dataclass
        raise ConfigError(f"{where}: {exc}") from exc
    return SimulationFile(config, ray_address)


def _table(raw: Mapping[str, Any], name: str, where: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: [{name}] must be a table")
    return dict(value)


def _known(table: Mapping[str, Any], known: set[str], name: str, where: str) -> None:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown keys in [{name}]: {unknown} (known: {sorted(known)})")


def _resources(table: dict[str, Any], where: str) -> ClientResources | None:
    if not table:
        return None
    _known(table, _RESOURCE_KEYS, "resources", where)
    device_memory = table.get("budget_device_memory")
    if device_memory is not None and not isinstance(device_memory, Mapping):
        raise ConfigError(f"{where}: budget_device_memory must map devices to sizes")
    budget = None
    if {"budget_memory", "budget_cpus", "budget_device_memory"} & set(table):
        budget = ResourceBudget.of(
            memory=table.get("budget_memory"),
            cpus=table.get("budget_cpus"),
            device_memory=device_memory,
        )
    try:
        return ClientResources(
            estimate=ResourceEstimate.of(
                memory=table.get("memory", 0),
                gpu_memory=table.get("gpu_memory", 0),
                cpus=table.get("cpus", 1.0),
            ),
            budget=budget,
            max_retries=table.get("max_retries", 3),
            growth=table.get("growth", 1.5),
        )
    except ConfigError as exc:
        raise ConfigError(f"{where}: [resources] {exc}") from exc


def _clients(table: dict[str, Any], where: str) -> dict[int, dict[str, Any]]:
    overrides: dict[int, dict[str, Any]] = {}
    for key, value in table.items():
        if not key.isdigit() or not isinstance(value, Mapping):
            raise ConfigError(f"{where}: [clients.N] sections need a client number, got {key!r}")
        overrides[int(key)] = dict(value)
    return overrides
