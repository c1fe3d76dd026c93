"""Federated averaging of a PyTorch model (McMahan et al., 2017).

Each round the modeller samples a fraction of the pods, sends them the global parameters,
and each sampled pod first evaluates them on its local validation split, then trains for
``training.epochs`` local epochs and returns its parameters with its number of training
samples. The modeller folds the updates into a streaming weighted mean; an update that is
malformed (NaN, wrong shape or dtype, unknown keys, weight ≤ 0) is left out with a typed
reason and the round goes on without it.

FedAvg is resumable (:attr:`~fedloom.protocols.TaskProtocol.resumable`): given a
:class:`~fedloom.protocols.ResumePoint` in its context it goes on at ``next_round`` from
the checkpointed global model. Pods are sampled each round from one generator: a run
that starts at round 0 seeds it with ``seed`` (so a fresh run samples exactly as before),
a run resumed at round ``r > 0`` with ``(seed, r)``, i.e. ``np.random.default_rng((seed,
r))``. Training itself is seeded per pod and round (``round_seed(seed, pod, round)``), so
with ``fraction=1.0`` a resumed run ends with the same model as an uninterrupted one.

What the pods are sent, how they train, how the updates are weighted and what the server
does with their mean is the task's :class:`~fedloom.strategies.Strategy` (``strategy``:
name + args, default ``fedavg``), the same object the simulation engine drives. Its
server state is checkpointed with the global model (under
:data:`~fedloom.strategies.STATE_PREFIX`), so a resumed FedAdam run is the uninterrupted
one, bit for bit.

``privacy`` (a list of :class:`~fedloom.privacy.TransformSpec`, default none) is the
task's update transforms: each pod applies them to its update just before sending it
(clipping, say), and their inverse steps run on the folded mean before the server step,
with the same code as the simulation's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np

from fedloom.algorithms.ml import ModelSpec, TrainingConfig, build_model
from fedloom.errors import ConfigError
from fedloom.privacy import TransformSpec, check_specs
from fedloom.protocols import _fedavg_modeller as fedavg_modeller
from fedloom.protocols import _fedavg_worker as fedavg_worker
from fedloom.protocols._base import (
    ModellerContext,
    TaskProtocol,
    WorkerContext,
    check_keys,
    optional_timeout,
    positive_int,
    real_in,
    register_protocol,
)
from fedloom.protocols._fedavg_result import FedAvgResult, RoundMetrics
from fedloom.session import ModellerMailbox, WorkerMailbox
from fedloom.strategies import StrategySpec

__all__ = ["FedAvg", "FedAvgResult", "RoundMetrics"]


@register_protocol
@dataclass(frozen=True)
class FedAvg(TaskProtocol[FedAvgResult]):
    """Federated averaging; see the module docstring.

    Each round is one request of the task (named ``round-<index>`` in the task's
    timings), judged by the modeller's request policy. ``round_timeout``, when set, is
    the rounds' time-out instead of the policy's; pods that miss it are handled as the
    policy's ``on_timeout`` says (without a policy: left out of the rest of the task).

    Raises (at construction):
        ConfigError: rounds < 1, fraction outside (0, 1], a bad training config, ...
    """

    name = "fedavg"
    resumable = True

    model: ModelSpec
    rounds: int = 10
    training: TrainingConfig = field(default_factory=TrainingConfig)
    fraction: float = 1.0
    min_pods: int = 1
    seed: int = 0
    validation_fraction: float = 0.2
    round_timeout: float | None = None
    strategy: StrategySpec = field(default_factory=StrategySpec)
    privacy: tuple[TransformSpec, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.strategy, StrategySpec):
            raise ConfigError(f"fedavg.strategy must be a StrategySpec, got {self.strategy!r}")
        self.strategy.build()
        object.__setattr__(self, "privacy", check_specs("fedavg", self.privacy))  # frozen
        positive_int("fedavg.rounds", self.rounds)
        positive_int("fedavg.min_pods", self.min_pods)
        positive_int("fedavg.seed", self.seed, minimum=0)
        real_in("fedavg.fraction", self.fraction, 0.0, 1.0, low_open=True)
        real_in("fedavg.validation_fraction", self.validation_fraction, 0.0, 0.9)
        optional_timeout("fedavg.round_timeout", self.round_timeout)

    def to_config(self) -> dict[str, Any]:
        return {
            "model": self.model.to_config(),
            "rounds": self.rounds,
            "training": self.training.to_config(),
            "fraction": self.fraction,
            "min_pods": self.min_pods,
            "seed": self.seed,
            "validation_fraction": self.validation_fraction,
            "round_timeout": self.round_timeout,
        } | (
            ({} if self.strategy.is_default else {"strategy": self.strategy.to_config()})
            | ({"privacy": [spec.to_config() for spec in self.privacy]} if self.privacy else {})
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        optional = {
            "rounds",
            "training",
            "fraction",
            "min_pods",
            "seed",
            "validation_fraction",
            "round_timeout",
            "strategy",
            "privacy",
        }
        check_keys("fedavg", config, {"model"}, optional)
        built = {"training", "strategy", "privacy"}
        kwargs = {key: config[key] for key in optional - built if key in config}
        training = TrainingConfig.from_config(config.get("training", {}))
        strategy = StrategySpec.from_config(config.get("strategy", "fedavg"))
        try:
            privacy = TransformSpec.list_from_config(config.get("privacy", []))
        except ConfigError as exc:
            raise ConfigError(f"fedavg.{exc}") from exc
        return cls(
            model=ModelSpec.from_config(config["model"]),
            training=training,
            strategy=strategy,
            privacy=privacy,
            **kwargs,
        )

    async def run_modeller(
        self, mailbox: ModellerMailbox, context: ModellerContext
    ) -> FedAvgResult:
        """Run rounds ``0 .. rounds - 1``, or with ``context.resume`` the ones still to run.

        A resumed run starts from the resume point's parameters, keeps its rounds in the
        history (see :meth:`RoundMetrics.from_record`) and sends no round at all when
        ``next_round >= rounds``.

        Raises:
            ConfigError: the resume point's parameters do not fit the model (a name
                missing or unknown, another shape or dtype; the message names it).
            PodResponseError, AggregationError: as a round needs (see the class).
        """
        return await fedavg_modeller.run_modeller(self, mailbox, context)

    def algorithms(self) -> frozenset[str]:
        """The model the pods train, by its registered name."""
        return frozenset({self.model.name})

    def check_task(self) -> None:
        """The model is registered here and its factory takes its config (it is built)."""
        build_model(self.model)

    def summarise(self, result: Any) -> dict[str, Any]:
        if not isinstance(result, FedAvgResult) or not result.history:
            return {}
        return {"rounds": len(result.history), "final": result.history[-1].to_dict()}

    def _sample(self, pods: list[str], rng: np.random.Generator) -> list[str]:
        active = sorted(pods)
        count = min(len(active), max(self.min_pods, math.ceil(self.fraction * len(active))))
        chosen = rng.choice(len(active), size=count, replace=False)
        return [active[i] for i in sorted(chosen)]

    async def run_worker(self, mailbox: WorkerMailbox, context: WorkerContext) -> dict[str, Any]:
        return await fedavg_worker.run_worker(self, mailbox, context)
