"""Federated averaging of a PyTorch model (McMahan et al., 2017).

Each round the modeller samples a fraction of the pods, sends them the global parameters,
and each sampled pod first evaluates them on its local validation split, then trains for
``training.epochs`` local epochs and returns its parameters with its number of training
samples. The modeller folds the updates into a streaming weighted mean; an update that is
malformed (NaN, wrong shape or dtype, unknown keys, weight ≤ 0) is left out with a typed
reason and the round goes on without it.

FedAvg is resumable (:attr:`~fedloom.protocols.Protocol.resumable`): given a
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

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

import numpy as np
import torch

from fedloom.algorithms.aggregation import WeightedMean
from fedloom.algorithms.ml import (
    METRIC_NAMES,
    ModelSpec,
    TrainingConfig,
    build_model,
    load_arrays,
    local_round,
    round_seed,
    split_validation,
    state_to_arrays,
    weighted_metrics,
)
from fedloom.algorithms.ml.rng import draws_random_numbers
from fedloom.errors import (
    AggregationError,
    ConfigError,
    DataError,
    PodFailure,
    PodResponseError,
    SchemaMismatchError,
    UpdateRejectedError,
    UpdateRejectionReason,
)
from fedloom.hooks import HookPoint, ThreadBridge
from fedloom.privacy import (
    FoldContext,
    ReleaseContext,
    TransformChain,
    TransformSpec,
    check_specs,
)
from fedloom.protocols.base import (
    ModellerContext,
    Protocol,
    ResumePoint,
    WorkerContext,
    check_keys,
    optional_timeout,
    positive_int,
    real_in,
    register_protocol,
)
from fedloom.store import RoundRecord
from fedloom.strategies import Strategy, StrategySpec, split_state, with_state
from fedloom.transport import ModellerMailbox, WorkerMailbox
from fedloom.transport.task import failure_text
from fedloom.wire import Body, Message, MessageType

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundMetrics:
    """What one round produced, aggregated and per pod.

    A round done before a resume is rebuilt from the experiment store
    (:meth:`from_record`), which keeps neither ``rejected`` nor ``seconds``: they are
    ``{}`` and ``0.0`` there.
    """

    round_index: int
    pods: list[str]
    aggregated: dict[str, float]
    per_pod: dict[str, dict[str, float]]
    rejected: dict[str, str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round_index,
            "pods": list(self.pods),
            "aggregated": dict(self.aggregated),
            "per_pod": {pod: dict(m) for pod, m in self.per_pod.items()},
            "rejected": dict(self.rejected),
            "seconds": self.seconds,
        }

    @classmethod
    def from_record(cls, record: RoundRecord) -> Self:
        """The metrics of a round as the experiment store recorded them (see above)."""
        return cls(
            round_index=record.round_index,
            pods=sorted(record.per_pod),
            aggregated=dict(record.aggregated),
            per_pod={pod: dict(metrics) for pod, metrics in record.per_pod.items()},
            rejected={},
            seconds=0.0,
        )


@dataclass(frozen=True)
class FedAvgResult:
    """The final global parameters and the per-round history."""

    model_spec: ModelSpec
    parameters: dict[str, np.ndarray]
    history: list[RoundMetrics]

    def model(self) -> torch.nn.Module:
        """A fresh torch module carrying the final global parameters."""
        module = build_model(self.model_spec)
        load_arrays(module, self.parameters)
        return module


@register_protocol
@dataclass(frozen=True)
class FedAvg(Protocol):
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

    # --- modeller side -------------------------------------------------------------

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
        strategy = self.strategy.build()
        privacy = TransformChain.of(self.privacy)
        global_arrays = state_to_arrays(build_model(self.model, seed=self.seed))
        state = strategy.initial_state(global_arrays)
        resume = context.resume
        start = 0
        history: list[RoundMetrics] = []
        if resume is not None:
            if resume.parameters is not None:
                global_arrays, state = self._resumed_parameters(resume, global_arrays, state)
            start = resume.next_round
            history = [RoundMetrics.from_record(record) for record in resume.rounds]
        # a run from round 0 samples exactly as it always did; see the module docstring
        rng = np.random.default_rng(self.seed if start == 0 else (self.seed, start))
        for round_index in range(start, self.rounds):
            started = time.monotonic()
            if len(mailbox.pods) < self.min_pods:
                raise PodResponseError(
                    f"fedavg round {round_index} needs at least {self.min_pods} pod(s), "
                    f"{len(mailbox.pods)} left",
                    {
                        pod: PodFailure.from_report(report)
                        for pod, report in (mailbox.refused | mailbox.aborted).items()
                    },
                )
            sampled = self._sample(mailbox.pods, rng)
            await _send_round(mailbox, strategy, round_index, global_arrays, sampled)
            # the task's request policy judges the round; round_timeout, if set, wins
            gathered = await mailbox.collect(
                MessageType.TRAINING_UPDATE,
                sampled,
                name=f"round-{round_index}",
                timeout=self.round_timeout,
            )
            mean = WeightedMean(global_arrays)
            per_pod: dict[str, dict[str, float]] = {}
            for pod in sorted(gathered.replies):
                reply = gathered.replies[pod]
                try:
                    metrics, aux = _parse_update(reply, round_index)
                    weight = strategy.fold_weight(metrics["num_samples"], aux)
                    mean.add(pod, reply.tensors, weight)
                except UpdateRejectedError as exc:
                    mean.rejected.setdefault(pod, exc)
                    logger.warning("round %d: update of %s rejected: %s", round_index, pod, exc)
                    continue
                per_pod[pod] = metrics | {"seconds": gathered.seconds[pod]}
            rejected = {pod: exc.reason.value for pod, exc in mean.rejected.items()}
            if not per_pod:
                aborted = {pod: failure_text(r) for pod, r in sorted(gathered.aborted.items())}
                raise AggregationError(
                    f"round {round_index}: no usable update (rejected: {rejected or 'none'}, "
                    f"aborted: {aborted or 'none'}, missing: {gathered.missing or 'none'})"
                )
            aggregate = mean.result()
            if privacy.unfolds:
                participants = tuple(sorted(per_pod))
                fold = FoldContext(self.seed, round_index, participants, mean.total_weight)
                privacy.unfold(aggregate, fold)
            following, state = strategy.server_step(global_arrays, aggregate, state)
            global_arrays = dict(following)
            summary = RoundMetrics(
                round_index=round_index,
                pods=sorted(per_pod),
                aggregated=weighted_metrics(per_pod.values()),
                per_pod=per_pod,
                rejected=rejected,
                seconds=time.monotonic() - started,
            )
            history.append(summary)
            context.record_round(
                round_index, summary.aggregated, summary.per_pod, with_state(global_arrays, state)
            )
            context.report_round(summary.to_dict())
        return FedAvgResult(self.model, global_arrays, history)

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

    def _resumed_parameters(
        self,
        resume: ResumePoint,
        model_arrays: Mapping[str, np.ndarray],
        initial_state: Mapping[str, np.ndarray],
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Copies of the resume point's model arrays and strategy state, checked against
        the model's state and the strategy's initial state.
        """
        arrays, state = split_state(resume.parameters or {})
        if sorted(state) != sorted(initial_state):
            raise ConfigError(
                f"the checkpoint of round {resume.next_round - 1} holds strategy state "
                f"{sorted(state) or 'none'}, strategy {self.strategy.name!r} keeps "
                f"{sorted(initial_state) or 'none'}; resume with the strategy the "
                "experiment was started with"
            )
        where = (
            f"the checkpoint of round {resume.next_round - 1} does not fit model "
            f"{self.model.name!r}"
        )
        missing = sorted(set(model_arrays) - set(arrays))
        unknown = sorted(set(arrays) - set(model_arrays))
        if missing or unknown:
            raise ConfigError(
                f"{where}: missing {missing or 'nothing'}, unknown {unknown or 'nothing'}; "
                "resume with the model the experiment was started with"
            )
        for key, expected in model_arrays.items():
            array = arrays[key]
            if array.shape != expected.shape or array.dtype != expected.dtype:
                raise ConfigError(
                    f"{where}: {key!r} is {array.dtype}{list(array.shape)}, the model has "
                    f"{expected.dtype}{list(expected.shape)}"
                )
        copies = {key: np.array(arrays[key], copy=True, order="C") for key in model_arrays}
        return copies, {key: np.array(value, copy=True) for key, value in state.items()}

    def _sample(self, pods: list[str], rng: np.random.Generator) -> list[str]:
        active = sorted(pods)
        count = min(len(active), max(self.min_pods, math.ceil(self.fraction * len(active))))
        chosen = rng.choice(len(active), size=count, replace=False)
        return [active[i] for i in sorted(chosen)]

    # --- worker side ---------------------------------------------------------------

    async def run_worker(self, mailbox: WorkerMailbox, context: WorkerContext) -> dict[str, Any]:
        hooks = context.hooks.bind(mailbox, context.pod)
        await hooks.fire(HookPoint.INIT_START, protocol=self.name)
        x, y = context.datasource.arrays()
        if y is None:
            raise SchemaMismatchError(
                "fedavg needs a labelled dataset (the datasource has no label column)"
            )
        x_train, y_train, x_val, y_val = split_validation(
            x, y, self.validation_fraction, context.pod, self.seed
        )
        model = build_model(self.model)
        strategy = self.strategy.build()
        privacy = TransformChain.of(self.privacy)
        exclusive_rng = draws_random_numbers(model)
        await hooks.fire(HookPoint.INIT_END, protocol=self.name)
        await hooks.fire(HookPoint.RUN_START, protocol=self.name)
        rounds: list[int] = []
        while True:
            message = await mailbox.receive(
                {MessageType.MODEL_PARAMETERS, MessageType.TASK_COMPLETE}
            )
            if message.type is MessageType.TASK_COMPLETE:
                released: dict[str, Any] = {"rounds": rounds, "train_samples": len(x_train)}
                await hooks.fire(HookPoint.RUN_END, protocol=self.name, released=released)
                return released
            round_index = _round_of(message)
            load_arrays(model, message.tensors)
            hook = strategy.client_hook(_global_copy(model, strategy), _values_of(message))
            # the training thread reports epochs and batches to the hooks on this loop
            async with hooks.bridge() as bridge:
                events = _TrainingEvents(bridge, round_index, self.training, len(x_train))
                outcome = await asyncio.to_thread(
                    local_round,
                    model,
                    x_train,
                    y_train,
                    self.training,
                    seed=round_seed(self.seed, context.pod, round_index),
                    x_val=x_val,
                    y_val=y_val,
                    on_batch=_if_wanted(bridge, HookPoint.BATCH_END, events.on_batch),
                    on_epoch_start=_if_wanted(bridge, HookPoint.EPOCH_START, events.on_start),
                    on_epoch_end=_if_wanted(bridge, HookPoint.EPOCH_END, events.on_end),
                    # in-process pods train in threads of one process and share torch's
                    # generator: models with dropout take turns, so each pod's draws are its own
                    exclusive_rng=exclusive_rng,
                    loss_term=hook.loss_term,
                )
            aux = hook.aux(model)
            body: dict[str, Body] = {
                "round": round_index,
                "num_samples": outcome.num_samples,
                "train": {k: float(v) for k, v in outcome.train.items()},
                "validation": {k: float(v) for k, v in outcome.validation.items()},
            }
            if aux:
                body["aux"] = {k: float(v) for k, v in aux.items()}
            update = state_to_arrays(model)
            if privacy:  # the last step before the update leaves the pod
                start = message.tensors if privacy.needs_global else {}
                releaser = ReleaseContext(self.seed, context.pod, round_index)
                update = dict(privacy.release(update, start, releaser))
            await mailbox.send(MessageType.TRAINING_UPDATE, body, update)
            rounds.append(round_index)


C = TypeVar("C", bound=Callable[..., None])


def _if_wanted(bridge: ThreadBridge, point: HookPoint, callback: C) -> C | None:
    """``callback`` if a hook listens to ``point``, else None (training skips the call)."""
    return callback if bridge.wants(point) else None


class _TrainingEvents:
    """train_local's callbacks for one round, as hook events (run in the training thread)."""

    def __init__(
        self, bridge: ThreadBridge, round_index: int, config: TrainingConfig, samples: int
    ) -> None:
        self._bridge = bridge
        self._batches = math.ceil(samples / config.batch_size)
        self._totals = {
            "round": round_index,
            "epochs": config.epochs,
            "batches": self._batches,
            "steps": config.epochs * self._batches,
        }

    def on_start(self, epoch: int) -> None:
        self._bridge.fire(HookPoint.EPOCH_START, **self._totals, epoch=epoch)

    def on_batch(self, epoch: int, batch: int, loss: float) -> None:
        step = epoch * self._batches + batch + 1
        self._bridge.fire(
            HookPoint.BATCH_END, **self._totals, epoch=epoch, batch=batch, step=step, loss=loss
        )

    def on_end(self, epoch: int, metrics: Mapping[str, float]) -> None:
        step = (epoch + 1) * self._batches
        self._bridge.fire(HookPoint.EPOCH_END, **self._totals, epoch=epoch, step=step, **metrics)


async def _send_round(
    mailbox: ModellerMailbox,
    strategy: Strategy,
    round_index: int,
    global_arrays: Mapping[str, np.ndarray],
    sampled: list[str],
) -> None:
    """The global arrays to every sampled pod, with its values if the strategy has any."""
    values = {pod: strategy.participant_values(round_index, pod) for pod in sampled}
    if not any(values.values()):
        await mailbox.broadcast(
            MessageType.MODEL_PARAMETERS, {"round": round_index}, global_arrays, sampled
        )
        return
    await asyncio.gather(
        *(
            mailbox.send(
                pod,
                MessageType.MODEL_PARAMETERS,
                {"round": round_index, "values": dict(values[pod])},
                global_arrays,
            )
            for pod in sampled
        )
    )


def _global_copy(model: torch.nn.Module, strategy: Strategy) -> dict[str, torch.Tensor]:
    """The global parameters the model holds now, for a client hook that reads them."""
    if not strategy.client_needs_global:
        return {}
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def _values_of(message: Message) -> dict[str, float]:
    body = message.body
    values = body.get("values") if isinstance(body, dict) else None
    if values is None:
        return {}
    if not isinstance(values, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values.values()
    ):
        raise DataError("MODEL_PARAMETERS values must be a map of numbers")
    return {str(k): float(v) for k, v in values.items()}


def _round_of(message: Message) -> int:
    body = message.body
    if not isinstance(body, dict) or not isinstance(body.get("round"), int):
        raise DataError("MODEL_PARAMETERS without an integer round")
    round_index: int = body["round"]
    return round_index


def _parse_update(message: Message, round_index: int) -> tuple[dict[str, float], dict[str, float]]:
    """A TRAINING_UPDATE body as (flat metrics, the strategy's aux values); a lying body
    is a rejected update.
    """
    body = message.body
    if not isinstance(body, dict) or body.get("round") != round_index:
        raise UpdateRejectedError(
            UpdateRejectionReason.MALFORMED, f"the update is not for round {round_index}"
        )
    weight = body.get("num_samples")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
        raise UpdateRejectedError(
            UpdateRejectionReason.BAD_WEIGHT, f"num_samples must be > 0, got {weight!r}"
        )
    metrics: dict[str, float] = {"num_samples": float(weight)}
    for phase in ("train", "validation"):
        values = body.get(phase)
        if not isinstance(values, dict):
            continue
        for name in (*METRIC_NAMES, "num_samples"):
            value = values.get(name)
            if (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
            ):
                metrics[f"{phase}_{name}"] = float(value)
    aux = body.get("aux", {})
    if not isinstance(aux, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        for v in aux.values()
    ):
        raise UpdateRejectedError(
            UpdateRejectionReason.MALFORMED, "aux must be a map of finite numbers"
        )
    return metrics, {str(k): float(v) for k, v in aux.items()}
