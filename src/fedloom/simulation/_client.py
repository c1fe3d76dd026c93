"""What a simulation worker does for one virtual client: the pods' own round code.

A :class:`ClientRunner` lives as long as its worker (process, thread or Ray actor) and
keeps one model and a cache of client data. For each :class:`ClientJob` it trains the
global parameters on the client's data with :func:`~fedloom.algorithms.ml._local_round`,
the very function a pod's FedAvg worker runs, with the participant name ``client-<id>``
and the same seeds, so a simulated client gives the update a pod holding its data would.

On the CPU the model's parameters *are* the slot the update goes to (shared memory for
the process pool): the global parameters are copied in once and training writes in place. The task's
update transforms (:mod:`fedloom.privacy`, clipping say) run on the slot in place once
training is done, as a pod runs them before sending its update.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from fedloom._registry import import_plugins
from fedloom.algorithms.ml import (
    ModelSpec,
    TrainingConfig,
    build_model,
    local_round,
    round_seed,
    split_validation,
)
from fedloom.algorithms.ml._rng import draws_random_numbers
from fedloom.errors import ConfigError
from fedloom.privacy import ReleaseContext, TransformChain, TransformSpec
from fedloom.simulation._data import ClientData, DataSpec, build_client_data
from fedloom.simulation._shm import ModuleAlias
from fedloom.strategies import StrategySpec

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "ClientJob",
    "ClientOutcome",
    "ClientRunner",
    "RunnerPlan",
    "participant",
]

DEFAULT_CACHE_BYTES = 1 << 30

Array = npt.NDArray[Any]


def participant(client: int) -> str:
    """The name a virtual client trains under (a pod's name in a real federation)."""
    return f"client-{client}"


@dataclass(frozen=True)
class ClientJob:
    """Train client ``client`` in round ``round``; ``overrides`` change its training.

    ``device``, when set (by the scheduler), is where the job must run.
    """

    client: int
    round: int
    overrides: Mapping[str, Any] = field(default_factory=dict)
    device: str | None = None
    values: Mapping[str, float] = field(default_factory=dict)
    """The strategy's values for this participant (as a pod gets them with the model)."""

    def to_body(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "round": self.round,
            "overrides": dict(self.overrides),
            "device": self.device,
        } | ({"values": dict(self.values)} if self.values else {})

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ClientJob:
        device = body.get("device")
        return cls(
            int(body["client"]),
            int(body["round"]),
            dict(body.get("overrides") or {}),
            None if device is None else str(device),
            {str(k): float(v) for k, v in (body.get("values") or {}).items()},
        )


@dataclass(frozen=True)
class ClientOutcome:
    """What a client's round produced (the update itself stays in its slot)."""

    client: int
    round: int
    num_samples: int
    train: dict[str, float]
    validation: dict[str, float]
    seconds: float
    started: float = 0.0  # wall clock (time.time()) when training began
    finished: float = 0.0
    aux: dict[str, float] = field(default_factory=dict)  # the strategy's client values

    def to_body(self) -> dict[str, Any]:
        return {
            "client": self.client,
            "round": self.round,
            "num_samples": self.num_samples,
            "train": self.train,
            "validation": self.validation,
            "seconds": self.seconds,
            "started": self.started,
            "finished": self.finished,
        } | ({"aux": self.aux} if self.aux else {})

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ClientOutcome:
        return cls(
            client=int(body["client"]),
            round=int(body["round"]),
            num_samples=int(body["num_samples"]),
            train={str(k): float(v) for k, v in body["train"].items()},
            validation={str(k): float(v) for k, v in body["validation"].items()},
            seconds=float(body["seconds"]),
            started=float(body.get("started", 0.0)),
            finished=float(body.get("finished", 0.0)),
            aux={str(k): float(v) for k, v in (body.get("aux") or {}).items()},
        )


@dataclass(frozen=True)
class RunnerPlan:
    """Everything a worker needs to build its runner: names and JSON config only."""

    model: ModelSpec
    data: DataSpec
    training: TrainingConfig
    seed: int = 0
    validation_fraction: float = 0.0
    cache_bytes: int = DEFAULT_CACHE_BYTES
    torch_threads: int = 1
    plugins: tuple[str, ...] = ()  # modules that register models or client data
    strategy: StrategySpec = field(default_factory=StrategySpec)
    privacy: tuple[TransformSpec, ...] = ()

    def to_config(self) -> dict[str, Any]:
        return {
            "model": self.model.to_config(),
            "data": self.data.to_config(),
            "training": self.training.to_config(),
            "seed": self.seed,
            "validation_fraction": self.validation_fraction,
            "cache_bytes": self.cache_bytes,
            "torch_threads": self.torch_threads,
            "plugins": list(self.plugins),
            "strategy": self.strategy.to_config(),
            "privacy": [spec.to_config() for spec in self.privacy],
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> RunnerPlan:
        return cls(
            model=ModelSpec.from_config(config["model"]),
            data=DataSpec.from_config(config["data"]),
            training=TrainingConfig.from_config(config["training"]),
            seed=int(config["seed"]),
            validation_fraction=float(config["validation_fraction"]),
            cache_bytes=int(config["cache_bytes"]),
            torch_threads=int(config["torch_threads"]),
            plugins=tuple(str(m) for m in config.get("plugins", ())),
            strategy=StrategySpec.from_config(config.get("strategy", "fedavg")),
            privacy=TransformSpec.list_from_config(config.get("privacy", [])),
        )


_Split = tuple[Array, Array, Array, Array]


class ClientRunner:
    """One worker's model, data cache and round code (see the module docstring)."""

    def __init__(self, plan: RunnerPlan, *, device: str = "cpu") -> None:
        """Build the model on ``device`` and the client data (loaded lazily per client).

        Raises:
            ConfigError, UnknownNameError: the model or data spec does not build.
        """
        import_plugins(plan.plugins)
        self.plan = plan
        self.device_name = device
        self.device = torch.device(device)
        self.model = build_model(plan.model, seed=plan.seed).to(self.device)
        self.strategy = plan.strategy.build()
        self.privacy = TransformChain.of(plan.privacy)
        self._alias = ModuleAlias(self.model)
        # set by backends whose runners share a process: models that draw random numbers
        # then train one at a time, so their draws from torch's one generator never mix
        self.exclusive_rng = False
        self._data: ClientData = build_client_data(plan.data)
        self._cache: OrderedDict[int, _Split] = OrderedDict()
        self._cached_bytes = 0

    @property
    def num_clients(self) -> int:
        return self._data.num_clients

    @property
    def needs_global(self) -> bool:
        """Whether :meth:`fit` reads ``global_params`` (the strategy's hook or a transform)."""
        return self.strategy.client_needs_global or self.privacy.needs_global

    @property
    def draws_random_numbers(self) -> bool:
        """Whether the model has layers that draw from torch's RNG in training (dropout)."""
        return draws_random_numbers(self.model)

    def fit(
        self,
        job: ClientJob,
        slot: Mapping[str, torch.Tensor],
        *,
        start: Mapping[str, torch.Tensor] | None = None,
        on_batch: Callable[[int, int, float], None] | None = None,
        global_params: Mapping[str, torch.Tensor] | None = None,
    ) -> ClientOutcome:
        """Train ``job``'s client from the global parameters; leave the update in ``slot``.

        ``slot`` (and ``start``) are per-key CPU tensors shaped like the model's state
        (views into flat blocks). The global parameters are in ``slot`` already, or are
        copied there from ``start``. ``on_batch`` may raise to stop training early.
        ``global_params`` (views of the round's global block, left untouched) are what the
        strategy's client hook and the privacy transforms read; without them, and only
        if one reads them (:attr:`needs_global`), the runner copies the global
        parameters once.

        Raises:
            DataError, ConfigError: from the client's data, its training or its
                transforms.
        """
        began = time.perf_counter()
        started = time.time()
        x_train, y_train, x_val, y_val = self._split(job.client)
        config = with_overrides(self.plan.training, job.overrides)
        on_cpu = self.device.type == "cpu"
        if start is not None:
            with torch.no_grad():
                for key, view in slot.items():
                    view.copy_(start[key])
        if self.needs_global and global_params is None:
            global_params = {key: view.detach().clone() for key, view in slot.items()}
        hook = self.strategy.client_hook(global_params or {}, job.values)
        if on_cpu:
            self._alias.point_at(slot)
        else:
            _load(self.model, slot)
        result = local_round(
            self.model,
            x_train,
            y_train,
            config,
            seed=round_seed(self.plan.seed, participant(job.client), job.round),
            x_val=x_val,
            y_val=y_val,
            on_batch=on_batch,
            exclusive_rng=self.exclusive_rng,
            loss_term=hook.loss_term,
        )
        aux = hook.aux(self.model)
        if not on_cpu:
            _store(self.model, slot)
        if self.privacy:  # the last step before the update leaves the worker
            context = ReleaseContext(self.plan.seed, participant(job.client), job.round)
            _release(self.privacy, slot, global_params or {}, context)
        return ClientOutcome(
            client=job.client,
            round=job.round,
            num_samples=result.num_samples,
            train=result.train,
            validation=result.validation,
            seconds=time.perf_counter() - began,
            started=started,
            finished=time.time(),
            aux=aux,
        )

    def _split(self, client: int) -> _Split:
        cached = self._cache.get(client)
        if cached is not None:
            self._cache.move_to_end(client)
            return cached
        x, y = self._data.load(client)
        split = split_validation(
            x, y, self.plan.validation_fraction, participant(client), self.plan.seed
        )
        size = sum(part.nbytes for part in split)
        while self._cache and self._cached_bytes + size > self.plan.cache_bytes:
            _, dropped = self._cache.popitem(last=False)
            self._cached_bytes -= sum(part.nbytes for part in dropped)
        if size <= self.plan.cache_bytes:
            self._cache[client] = split
            self._cached_bytes += size
        return split


def with_overrides(config: TrainingConfig, overrides: Mapping[str, Any]) -> TrainingConfig:
    """``config`` with one client's overrides applied.

    Raises:
        ConfigError: an unknown training key, or a value the training config refuses.
    """
    if not overrides:
        return config
    known = set(config.to_config())
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown per-client training keys {unknown} (known: {sorted(known)})")
    return replace(config, **overrides)


def _release(
    chain: TransformChain,
    slot: Mapping[str, torch.Tensor],
    global_params: Mapping[str, torch.Tensor],
    context: ReleaseContext,
) -> None:
    """Run ``chain`` on the update in ``slot``, in place (numpy views share its memory)."""
    update = {key: view.detach().numpy() for key, view in slot.items()}
    start = {key: view.detach().numpy() for key, view in global_params.items()}
    released = chain.release(dict(update), start, context)
    for key, array in update.items():
        if released[key] is not array:  # a transform that made new arrays
            np.copyto(array, released[key], casting="same_kind")


def _load(model: torch.nn.Module, source: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            tensor.copy_(source[key])


def _store(model: torch.nn.Module, target: Mapping[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            target[key].copy_(tensor)
