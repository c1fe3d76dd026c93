"""FedAvg's worker side: local training each round, then the update's release.

For each MODEL_PARAMETERS the pod loads the global parameters, trains on its training
split (seeded per pod and round, hook events from the training thread), applies the
task's privacy transforms to its update as the last step, and sends TRAINING_UPDATE.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from fedloom._hooks import HookPoint, ThreadBridge
from fedloom.algorithms.ml import (
    TrainingConfig,
    build_model,
    load_arrays,
    local_round,
    round_seed,
    split_validation,
    state_to_arrays,
)
from fedloom.algorithms.ml._rng import draws_random_numbers
from fedloom.errors import DataError, SchemaMismatchError
from fedloom.privacy import ReleaseContext, TransformChain
from fedloom.protocols._base import WorkerContext
from fedloom.session import WorkerMailbox
from fedloom.strategies import Strategy
from fedloom.wire import Body, Message, MessageType

if TYPE_CHECKING:
    from fedloom.protocols._fedavg import FedAvg


async def run_worker(
    protocol: FedAvg, mailbox: WorkerMailbox, context: WorkerContext
) -> dict[str, Any]:
    """The pod's rounds of ``protocol`` until TASK_COMPLETE; what it released.

    Raises:
        SchemaMismatchError: the datasource has no labels.
        DataError: a MODEL_PARAMETERS message without an integer round, or with values
            that are not a map of numbers.
    """
    hooks = context.hooks.bind(mailbox, context.pod)
    await hooks.fire(HookPoint.INIT_START, protocol=protocol.name)
    x, y = context.datasource.arrays()
    if y is None:
        raise SchemaMismatchError(
            "fedavg needs a labelled dataset (the datasource has no label column)"
        )
    x_train, y_train, x_val, y_val = split_validation(
        x, y, protocol.validation_fraction, context.pod, protocol.seed
    )
    model = build_model(protocol.model)
    strategy = protocol.strategy.build()
    privacy = TransformChain.of(protocol.privacy)
    exclusive_rng = draws_random_numbers(model)
    await hooks.fire(HookPoint.INIT_END, protocol=protocol.name)
    await hooks.fire(HookPoint.RUN_START, protocol=protocol.name)
    rounds: list[int] = []
    while True:
        message = await mailbox.receive({MessageType.MODEL_PARAMETERS, MessageType.TASK_COMPLETE})
        if message.type is MessageType.TASK_COMPLETE:
            released: dict[str, Any] = {"rounds": rounds, "train_samples": len(x_train)}
            await hooks.fire(HookPoint.RUN_END, protocol=protocol.name, released=released)
            return released
        round_index = _round_of(message)
        load_arrays(model, message.tensors)
        hook = strategy.client_hook(_global_copy(model, strategy), _values_of(message))
        # the training thread reports epochs and batches to the hooks on this loop
        async with hooks.bridge() as bridge:
            events = _TrainingEvents(bridge, round_index, protocol.training, len(x_train))
            outcome = await asyncio.to_thread(
                local_round,
                model,
                x_train,
                y_train,
                protocol.training,
                seed=round_seed(protocol.seed, context.pod, round_index),
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
            releaser = ReleaseContext(protocol.seed, context.pod, round_index)
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
