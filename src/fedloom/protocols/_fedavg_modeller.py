"""FedAvg's modeller side: the rounds, the fold of the updates, the server step, the resume.

Each round samples pods, sends them the global arrays (with each pod's values if the
strategy has any), folds the usable updates into a streaming weighted mean, runs the
privacy transforms' inverse steps and the strategy's server step on it, and records the
round with its checkpoint. An update that is malformed is left out with a typed reason.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from fedloom.algorithms._aggregation import WeightedMean
from fedloom.algorithms.ml import METRIC_NAMES, build_model, state_to_arrays, weighted_metrics
from fedloom.errors import (
    AggregationError,
    ConfigError,
    PodFailure,
    PodResponseError,
    UpdateRejectedError,
    UpdateRejectionReason,
)
from fedloom.privacy import FoldContext, TransformChain
from fedloom.protocols._base import ModellerContext, ResumePoint
from fedloom.protocols._fedavg_result import FedAvgResult, RoundMetrics
from fedloom.session import ModellerMailbox, failure_text
from fedloom.strategies import Strategy, split_state, with_state
from fedloom.wire import Message, MessageType

if TYPE_CHECKING:
    from fedloom.protocols._fedavg import FedAvg

logger = logging.getLogger(__name__)


async def run_modeller(
    protocol: FedAvg, mailbox: ModellerMailbox, context: ModellerContext
) -> FedAvgResult:
    """:meth:`FedAvg.run_modeller <fedloom.protocols.FedAvg.run_modeller>` of ``protocol``.

    Raises:
        ConfigError, PodResponseError, AggregationError: see there.
    """
    strategy = protocol.strategy.build()
    privacy = TransformChain.of(protocol.privacy)
    global_arrays = state_to_arrays(build_model(protocol.model, seed=protocol.seed))
    state = strategy.initial_state(global_arrays)
    resume = context.resume
    start = 0
    history: list[RoundMetrics] = []
    if resume is not None:
        if resume.parameters is not None:
            global_arrays, state = _resumed_parameters(protocol, resume, global_arrays, state)
        start = resume.next_round
        history = [RoundMetrics.from_record(record) for record in resume.rounds]
    # a run from round 0 samples exactly as it always did; see fedloom.protocols._fedavg
    rng = np.random.default_rng(protocol.seed if start == 0 else (protocol.seed, start))
    for round_index in range(start, protocol.rounds):
        started = time.monotonic()
        if len(mailbox.pods) < protocol.min_pods:
            raise PodResponseError(
                f"fedavg round {round_index} needs at least {protocol.min_pods} pod(s), "
                f"{len(mailbox.pods)} left",
                {
                    pod: PodFailure.from_report(report)
                    for pod, report in (mailbox.refused | mailbox.aborted).items()
                },
            )
        sampled = protocol._sample(mailbox.pods, rng)
        await _send_round(mailbox, strategy, round_index, global_arrays, sampled)
        # the task's request policy judges the round; round_timeout, if set, wins
        gathered = await mailbox.collect(
            MessageType.TRAINING_UPDATE,
            sampled,
            name=f"round-{round_index}",
            timeout=protocol.round_timeout,
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
            fold = FoldContext(protocol.seed, round_index, participants, mean.total_weight)
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
    return FedAvgResult(protocol.model, global_arrays, history)


def _resumed_parameters(
    protocol: FedAvg,
    resume: ResumePoint,
    model_arrays: Mapping[str, np.ndarray],
    initial_state: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Copies of the resume point's model arrays and strategy state, checked.

    They are checked against the model's state and the strategy's initial state.
    """
    arrays, state = split_state(resume.parameters or {})
    if sorted(state) != sorted(initial_state):
        raise ConfigError(
            f"the checkpoint of round {resume.next_round - 1} holds strategy state "
            f"{sorted(state) or 'none'}, strategy {protocol.strategy.name!r} keeps "
            f"{sorted(initial_state) or 'none'}; resume with the strategy the "
            "experiment was started with"
        )
    where = (
        f"the checkpoint of round {resume.next_round - 1} does not fit model "
        f"{protocol.model.name!r}"
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


def _parse_update(message: Message, round_index: int) -> tuple[dict[str, float], dict[str, float]]:
    """A TRAINING_UPDATE body as (flat metrics, the strategy's aux values).

    Raises:
        UpdateRejectedError: the body lies (another round, a weight <= 0, bad aux values).
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
