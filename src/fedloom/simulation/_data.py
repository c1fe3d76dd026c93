"""Where virtual clients get their data: a registered name plus JSON config.

Every worker rebuilds the same :class:`ClientData` from its :class:`DataSpec` and loads the
clients it is given, so no training data ever crosses a process boundary. Built-ins:

- ``synthetic``: the standard benchmark generator (docs/benchmarks.md): for
  client ``c``, ``g = torch.Generator().manual_seed(seed_base + c)``, ``x = randn(samples,
  *shape)``, ``y = randint(0, classes, (samples,))``;
- ``partitioned``: one dataset (a datasource config: CSV, Parquet, ...) split over the
  clients, IID or label-skewed (Dirichlet), deterministically from a seed;
- ``digits``: scikit-learn's bundled digits (no download) split the same way.

Plugins register more with ``@CLIENT_DATA.register("name")``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from fedloom._registry import Registry
from fedloom.errors import ConfigError, DataError

__all__ = ["CLIENT_DATA", "ClientData", "DataSpec", "build_client_data"]

Array = npt.NDArray[Any]


class ClientData(Protocol):
    """The data of every virtual client of a simulation."""

    @property
    def num_clients(self) -> int:
        """How many clients there are (ids ``0 .. num_clients - 1``)."""
        ...

    def load(self, client: int) -> tuple[Array, Array]:
        """``(x, y)`` of one client: samples along the first axis, integer labels.

        Raises:
            DataError: the client id is out of range or its data cannot be read.
        """
        ...


CLIENT_DATA: Registry[Callable[[Mapping[str, Any]], ClientData]] = Registry("client data")


@dataclass(frozen=True)
class DataSpec:
    """A registered client-data name and its JSON-like config."""

    name: str
    config: Mapping[str, Any] = field(default_factory=dict)

    def to_config(self) -> dict[str, Any]:
        """The JSON-able config this spec is rebuilt from."""
        return {"name": self.name, "config": dict(self.config)}

    @classmethod
    def from_config(cls, config: object) -> DataSpec:
        """``{"name": ..., "config": {...}}`` or ``{"name": ..., <config keys>}``.

        Raises:
            ConfigError: not a mapping, or no string ``name``.
        """
        if not isinstance(config, Mapping) or not isinstance(config.get("name"), str):
            raise ConfigError(f"client data must be a mapping with a 'name', got {config!r}")
        if "config" in config:
            inner = config["config"]
            if not isinstance(inner, Mapping) or set(config) != {"name", "config"}:
                raise ConfigError("client data: give either 'config' = {...} or flat keys")
            return cls(config["name"], dict(inner))
        return cls(config["name"], {k: v for k, v in config.items() if k != "name"})


def build_client_data(spec: DataSpec) -> ClientData:
    """Build the client data ``spec`` names.

    Raises:
        UnknownNameError: no such client data is registered.
        ConfigError: the config does not fit.
    """
    return CLIENT_DATA.get(spec.name)(spec.config)


def _keys(name: str, config: Mapping[str, Any], required: set[str], optional: set[str]) -> None:
    missing = sorted(required - set(config))
    unknown = sorted(set(config) - required - optional)
    if missing or unknown:
        raise ConfigError(
            f"{name} client data: missing keys {missing}, unknown keys {unknown} "
            f"(allowed: {sorted(required | optional)})"
        )


def _count(name: str, key: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} client data: {key!r} must be an int >= {minimum}, got {value!r}")
    return value


def _check_client(client: int, count: int) -> None:
    if isinstance(client, bool) or not isinstance(client, int) or not 0 <= client < count:
        raise DataError(f"client {client!r} does not exist (there are {count} clients)")


class SyntheticClients:
    """The benchmark generator of WORKLOADS.md (see the module docstring)."""

    def __init__(
        self,
        clients: int,
        samples: int,
        shape: tuple[int, ...],
        *,
        classes: int = 10,
        seed_base: int = 1000,
    ) -> None:
        self._clients = clients
        self._samples = samples
        self._shape = shape
        self._classes = classes
        self._seed_base = seed_base

    @property
    def num_clients(self) -> int:
        return self._clients

    def load(self, client: int) -> tuple[Array, Array]:
        import torch

        _check_client(client, self._clients)
        generator = torch.Generator().manual_seed(self._seed_base + client)
        x = torch.randn((self._samples, *self._shape), generator=generator)
        y = torch.randint(0, self._classes, (self._samples,), generator=generator)
        return x.numpy(), y.numpy()


@CLIENT_DATA.register("synthetic")
def synthetic(config: Mapping[str, Any]) -> ClientData:
    """The standard benchmark generator: random features and labels, seeded per client.

    Config: ``clients``, ``samples``, ``shape`` (list of ints); optional ``classes`` (10),
    ``seed_base`` (1000).
    """
    name = "synthetic"
    _keys(name, config, {"clients", "samples", "shape"}, {"classes", "seed_base"})
    shape = config["shape"]
    if not isinstance(shape, list | tuple) or not shape:
        raise ConfigError(f"synthetic client data: 'shape' must be a list of ints, got {shape!r}")
    return SyntheticClients(
        _count(name, "clients", config["clients"]),
        _count(name, "samples", config["samples"]),
        tuple(_count(name, "shape", n) for n in shape),
        classes=_count(name, "classes", config.get("classes", 10), minimum=2),
        seed_base=_count(name, "seed_base", config.get("seed_base", 1000), minimum=0),
    )


class PartitionedClients:
    """One labelled dataset split over clients; loaded once per process, on first use."""

    def __init__(
        self,
        load_all: Callable[[], tuple[Array, Array]],
        clients: int,
        *,
        partition: str,
        alpha: float,
        seed: int,
    ) -> None:
        self._load_all = load_all
        self._clients = clients
        self._partition = partition
        self._alpha = alpha
        self._seed = seed
        self._data: tuple[Array, Array, list[Array]] | None = None

    @property
    def num_clients(self) -> int:
        return self._clients

    def load(self, client: int) -> tuple[Array, Array]:
        _check_client(client, self._clients)
        x, y, parts = self._materialised()
        index = parts[client]
        return x[index], y[index]

    def _materialised(self) -> tuple[Array, Array, list[Array]]:
        if self._data is None:
            from fedloom.datasources._partition import dirichlet_partition, iid_partition

            x, y = self._load_all()
            if self._partition == "iid":
                parts = iid_partition(len(x), self._clients, seed=self._seed)
            else:
                parts = dirichlet_partition(y, self._clients, alpha=self._alpha, seed=self._seed)
            self._data = (x, y, parts)
        return self._data


_PARTITION_KEYS = {"clients", "partition", "alpha", "seed"}


def _partitioned(
    name: str, config: Mapping[str, Any], load_all: Callable[[], tuple[Array, Array]]
) -> ClientData:
    partition = config.get("partition", "iid")
    if partition not in ("iid", "dirichlet"):
        raise ConfigError(f"{name}: 'partition' must be 'iid' or 'dirichlet', got {partition!r}")
    alpha = config.get("alpha", 0.5)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not alpha > 0:
        raise ConfigError(f"{name}: 'alpha' must be a number > 0, got {alpha!r}")
    return PartitionedClients(
        load_all,
        _count(name, "clients", config["clients"]),
        partition=partition,
        alpha=float(alpha),
        seed=_count(name, "seed", config.get("seed", 0), minimum=0),
    )


@CLIENT_DATA.register("partitioned")
def partitioned(config: Mapping[str, Any]) -> ClientData:
    """One dataset split over the clients, IID or label-skewed (Dirichlet), from a seed.

    Config: ``dataset`` (a datasource config, e.g. ``{"kind": "csv", "path": ...,
    "label_column": "y"}``), ``clients``; optional ``partition`` ("iid" or "dirichlet"),
    ``alpha`` (0.5), ``seed`` (0).
    """
    name = "partitioned client data"
    _keys(name, config, {"dataset", "clients"}, _PARTITION_KEYS - {"clients"})
    dataset = config["dataset"]
    if not isinstance(dataset, Mapping):
        raise ConfigError(f"{name}: 'dataset' must be a datasource config mapping")

    def load_all() -> tuple[Array, Array]:
        from fedloom.datasources import datasource_from_config

        x, y = datasource_from_config(dataset).arrays()
        if y is None:
            raise DataError(f"{name}: the dataset has no label column to train on")
        return np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)

    return _partitioned(name, config, load_all)


@CLIENT_DATA.register("digits")
def digits(config: Mapping[str, Any]) -> ClientData:
    """scikit-learn's digits (8x8 images as 64 features in [0, 1], 10 classes), partitioned.

    Config: ``clients``; optional ``partition``, ``alpha``, ``seed`` (as for ``partitioned``).
    """
    name = "digits client data"
    _keys(name, config, {"clients"}, _PARTITION_KEYS - {"clients"})

    def load_all() -> tuple[Array, Array]:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return (bunch.data / 16.0).astype(np.float32), bunch.target.astype(np.int64)

    return _partitioned(name, config, load_all)
