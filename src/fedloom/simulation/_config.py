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

[strategy]                 # optional (default fedavg), as a task file's FedAvg takes it:
name = "fedprox"           # a registered strategy, or strategy = "fedprox" at the top
args = { mu = 0.01 }

[[privacy]]                # optional update transforms, applied in this order
name = "clip"
args = { max_norm = 1.0 }

[clients.3]                # per-client training overrides
learning_rate = 0.01
```

An error names the file, the section and the key, as in ``sim.toml: [training] epochs
must be an int, got 'x'``; the checks themselves are the dataclasses' (see ``_build``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

from fedloom._config_file import read_toml
from fedloom._registry import import_plugins
from fedloom.algorithms.ml import MODELS, ModelSpec, TrainingConfig, build_model
from fedloom.errors import ConfigError, UnknownNameError
from fedloom.privacy import TransformSpec
from fedloom.scheduler import ResourceBudget, ResourceEstimate
from fedloom.simulation._client import with_overrides
from fedloom.simulation._data import CLIENT_DATA, DataSpec, build_client_data
from fedloom.simulation._sampling import Sampling
from fedloom.simulation._settings import ClientResources, SimulationConfig
from fedloom.strategies import StrategySpec

__all__ = ["SimulationFile", "load_simulation_file", "simulation_from_mapping"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_SECTIONS = {
    "simulation",
    "model",
    "data",
    "training",
    "sampling",
    "resources",
    "clients",
    "strategy",
    "privacy",
}
_SIMULATION_KEYS = {
    "rounds",
    "seed",
    "backend",
    "num_parallels",
    "device",
    "device_count",
    "validation_fraction",
    "start_method",
    "plugins",
    "round_timeout",
    "torch_threads",
    "ray_address",
}
_SIMULATION_STRINGS = ("backend", "device", "start_method", "ray_address")
_MODEL_KEYS = {"name", "config"}
_TRAINING_KEYS = {f.name for f in fields(TrainingConfig)}
_SAMPLING_KEYS = {f.name for f in fields(Sampling)}
_ESTIMATE_KEYS = ("memory", "gpu_memory", "cpus")  # ResourceEstimate.of's own names
_BUDGET_KEYS = {  # [resources] key -> its ResourceBudget.of keyword
    "budget_memory": "memory",
    "budget_cpus": "cpus",
    "budget_device_memory": "device_memory",
}
_RETRY_KEYS = ("max_retries", "growth")  # ClientResources' own names
_RESOURCE_KEYS = {*_ESTIMATE_KEYS, *_BUDGET_KEYS, *_RETRY_KEYS}


@dataclass(frozen=True)
class SimulationFile:
    """A parsed simulation file: the config plus backend options."""

    config: SimulationConfig
    ray_address: str | None = None


def load_simulation_file(path: str | Path) -> SimulationFile:
    """Read and check a simulation TOML file.

    Raises:
        ConfigError: the file is missing, unreadable or not TOML (with the line and
            column; see :func:`fedloom._config_file.read_toml`), or any section is wrong
            (the message names the section and key).
    """
    top = read_toml(path, kind="simulation file")
    # errors name the file as it was given: that is what its author typed
    return simulation_from_mapping(top.data, where=str(path))


def simulation_from_mapping(raw: Mapping[str, Any], *, where: str = "config") -> SimulationFile:
    """Build a :class:`SimulationFile` from the TOML structure.

    The plugins are imported, the model is built on the meta device and the client data
    is set up (it loads nothing yet), so that their errors name their section here rather
    than surfacing once the run starts.

    Raises:
        ConfigError: unknown sections or keys, missing ``[model]``/``[data]``, bad values;
            the message starts with ``<where>: [<section>] <key>``.
    """
    unknown = sorted(set(raw) - _SECTIONS)
    if unknown:
        raise ConfigError(f"{where}: unknown sections {unknown} (known: {sorted(_SECTIONS)})")
    for required in ("model", "data"):
        if not isinstance(raw.get(required), Mapping):
            raise ConfigError(f"{where}: a [{required}] section is required")
    simulation = _table(raw, "simulation", where)
    _known(simulation, _SIMULATION_KEYS, "simulation", where)
    for key in _SIMULATION_STRINGS:
        if key in simulation and not isinstance(simulation[key], str):
            raise ConfigError(
                f"{where}: [simulation] {key} must be a string, got {simulation[key]!r}"
            )
    plugins = _plugins(simulation.get("plugins", []), where)
    model = _model(_table(raw, "model", where), where)
    data, num_clients = _data(_table(raw, "data", where), where)
    training_table = _known(_table(raw, "training", where), _TRAINING_KEYS, "training", where)
    training = _build("training", where, TrainingConfig, training_table)
    sampling_table = _known(_table(raw, "sampling", where), _SAMPLING_KEYS, "sampling", where)
    sampling = _build("sampling", where, Sampling, sampling_table)
    options = {k: v for k, v in simulation.items() if k not in {"ray_address", "plugins"}}
    config = _build(
        "simulation",
        where,
        functools.partial(
            SimulationConfig,
            model=model,
            data=data,
            training=training,
            sampling=sampling,
            resources=_resources(_table(raw, "resources", where), where),
            client_overrides=_clients(_table(raw, "clients", where), training, num_clients, where),
            plugins=plugins,
            strategy=_strategy(raw.get("strategy", "fedavg"), where),
            privacy=_privacy(raw.get("privacy", []), where),
        ),
        options,
    )
    return SimulationFile(config, simulation.get("ray_address"))


def _table(raw: Mapping[str, Any], name: str, where: str) -> dict[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: [{name}] must be a table")
    return dict(value)


def _known(table: dict[str, Any], known: set[str], name: str, where: str) -> dict[str, Any]:
    unknown = sorted(set(table) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown keys in [{name}]: {unknown} (known: {sorted(known)})")
    return table


def _build(
    section: str,
    where: str,
    make: Callable[..., T],
    table: Mapping[str, Any],
    keywords: Mapping[str, str] | None = None,
) -> T:
    """``make(**table)``, its ConfigError naming ``[section]`` and the key at fault.

    The key at fault is the one that, passed alone, fails with the same message (the
    dataclasses check each field on its own); ``keywords`` maps a TOML key to the keyword
    it is passed as, where they differ.
    """
    names = keywords or {}

    def call(keys: Iterable[str]) -> T:
        return make(**{names.get(key, key): table[key] for key in keys})

    try:
        return call(table)
    except (ConfigError, TypeError) as exc:  # TypeError: a value of the wrong type
        message = str(exc)
        key = next((k for k in table if _fails_alone(call, k, message)), None)
        raise ConfigError(f"{where}: [{section}] {_keyed(section, key, message)}") from exc


def _fails_alone(call: Callable[[Iterable[str]], object], key: str, message: str) -> bool:
    try:
        call([key])
    except (ConfigError, TypeError) as exc:
        return str(exc) == message
    return False


def _keyed(section: str, key: str | None, message: str) -> str:
    """``message`` led by ``key`` ("simulation rounds must ..." -> "rounds must ...")."""
    if key is None:
        return message
    for lead in (f"{section} {key} ", f"{key} "):
        if message.startswith(lead):
            return f"{key} {message[len(lead) :]}"
    return f"{key}: {message}"


def _plugins(plugins: object, where: str) -> tuple[str, ...]:
    if not isinstance(plugins, list) or not all(isinstance(m, str) for m in plugins):
        raise ConfigError(
            f"{where}: [simulation] plugins must be a list of module names, got {plugins!r}"
        )
    try:
        import_plugins(tuple(plugins))
    except ConfigError as exc:
        raise ConfigError(f"{where}: [simulation] plugins: {exc}") from exc
    except ImportError as exc:
        raise ConfigError(f"{where}: [simulation] plugins: cannot import: {exc}") from exc
    return tuple(plugins)


def _model(table: dict[str, Any], where: str) -> ModelSpec:
    _known(table, _MODEL_KEYS, "model", where)
    name = _registered_name(table, MODELS.names(), "model", where)
    spec = _build("model", where, functools.partial(ModelSpec, name), _without(table, "name"))
    import torch

    try:
        with torch.device("meta"):  # shapes only: no memory, no init kernels
            build_model(spec)
    except UnknownNameError as exc:
        raise ConfigError(f"{where}: [model] name: {exc}") from exc
    except ConfigError as exc:
        raise ConfigError(f"{where}: [model] {exc}") from exc
    except Exception:  # checked for real when the run builds it
        logger.debug("model %s does not build on the meta device", spec.name)
    return spec


def _data(table: dict[str, Any], where: str) -> tuple[DataSpec, int]:
    _registered_name(table, CLIENT_DATA.names(), "data", where)
    try:
        spec = DataSpec.from_config(table)
        return spec, build_client_data(spec).num_clients
    except UnknownNameError as exc:
        raise ConfigError(f"{where}: [data] name: {exc}") from exc
    except ConfigError as exc:
        raise ConfigError(f"{where}: [data] {exc}") from exc


def _registered_name(table: dict[str, Any], known: list[str], section: str, where: str) -> str:
    """The section's ``name``: it must be there, and a string."""
    if "name" not in table:
        raise ConfigError(f"{where}: [{section}] name is missing (registered: {', '.join(known)})")
    name = table["name"]
    if not isinstance(name, str):
        raise ConfigError(
            f"{where}: [{section}] name must be a string (registered: {', '.join(known)}), "
            f"got {name!r}"
        )
    return name


def _without(table: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in table.items() if k != key}


def _strategy(config: object, where: str) -> StrategySpec:
    try:
        return StrategySpec.from_config(config)
    except ConfigError as exc:
        raise ConfigError(f"{where}: [strategy] {exc}") from exc


def _privacy(config: object, where: str) -> tuple[TransformSpec, ...]:
    try:
        return TransformSpec.list_from_config(config)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _resources(table: dict[str, Any], where: str) -> ClientResources | None:
    if not table:
        return None
    _known(table, _RESOURCE_KEYS, "resources", where)
    device_memory = table.get("budget_device_memory")
    if device_memory is not None and not isinstance(device_memory, Mapping):
        raise ConfigError(
            f"{where}: [resources] budget_device_memory must be a table of device sizes "
            f'such as {{ "cuda:0" = "8 GiB" }}, got {device_memory!r}'
        )

    def part(keys: Iterable[str]) -> dict[str, Any]:
        return {key: table[key] for key in keys if key in table}

    estimate = _build("resources", where, ResourceEstimate.of, part(_ESTIMATE_KEYS))
    budget_table = part(_BUDGET_KEYS)
    budget = (
        _build("resources", where, ResourceBudget.of, budget_table, _BUDGET_KEYS)
        if budget_table
        else None
    )
    return _build(
        "resources",
        where,
        functools.partial(ClientResources, estimate=estimate, budget=budget),
        part(_RETRY_KEYS),
    )


def _clients(
    table: dict[str, Any], training: TrainingConfig, num_clients: int, where: str
) -> dict[int, dict[str, Any]]:
    overrides: dict[int, dict[str, Any]] = {}
    for key, value in table.items():
        if not key.isdigit():
            raise ConfigError(f"{where}: [clients.N] sections need a client number, got {key!r}")
        section, client = f"clients.{key}", int(key)
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"{where}: [{section}] must be a table of training settings, got {value!r}"
            )
        if client >= num_clients:
            raise ConfigError(
                f"{where}: [{section}] there is no client {client}: [data] has "
                f"{num_clients} clients, numbered from 0"
            )
        try:
            with_overrides(training, value)
        except ConfigError as exc:
            raise ConfigError(f"{where}: [{section}] client {client}'s overrides: {exc}") from exc
        overrides[client] = dict(value)
    return overrides
