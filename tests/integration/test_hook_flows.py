"""Worker hooks in real runs: progress to the modeller, life-cycle order, no effect on results.

The first tests run through :class:`~fedloom.LocalFederation`, whose pods use the default
hooks (``DEFAULT_WORKER_HOOKS``). A pod has no way yet to be given other hooks (that comes
with the spawned worker's config, which carries hook names), so the tests with a custom
hook set run both sides of the protocol themselves: the real protocol code on real task
mailboxes over a real :class:`~fedloom.hub.MemoryHub`, with the modeller's TASK_COMPLETE sent
the way :class:`~fedloom.Modeller` sends it.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from fedloom import Analytics, FedAvg, FedAvgResult, LocalFederation, TrainingConfig
from fedloom._hooks import Hook, HookEvent, HookPoint, HookSet, build_hooks, register_hook
from fedloom.algorithms._analytics import AnalyticsRequest
from fedloom.hub import MemoryHub
from fedloom.plugins import MessageType
from fedloom.pod import ArraySource, TableSource
from fedloom.protocols import ModellerContext, TaskProtocol, WorkerContext
from fedloom.session import ModellerMailbox, WorkerMailbox
from fedloom.testing import connect_federation
from fedloom.transport import TaskRouter

from .conftest import TINY_MLP, labelled_arrays
from .pod_events import PodEvents

SIZES = {"pod-a": 40, "pod-b": 57}
TRAINING = TrainingConfig(epochs=2, batch_size=8, learning_rate=0.1)
TRAIN_ROWS = {"pod-a": 32, "pod-b": 46}  # what is left after the 20 % validation split
BATCHES = {pod: math.ceil(rows / TRAINING.batch_size) for pod, rows in TRAIN_ROWS.items()}
ROUNDS = 2


def pods() -> dict[str, ArraySource]:
    return {
        pod: ArraySource(*labelled_arrays(rows, seed=index))
        for index, (pod, rows) in enumerate(SIZES.items())
    }


def fedavg() -> FedAvg:
    return FedAvg(model=TINY_MLP, rounds=ROUNDS, training=TRAINING, seed=7)


EVENTS: dict[str, list[tuple[str, HookPoint, dict[str, Any]]]] = {}
"""What the ``test-recorder`` hooks saw, per run label (set by :func:`recorder`)."""

_runs = itertools.count()


@register_hook("test-recorder")
class RecorderHook(Hook):
    """A plugin hook, built by name like any other: records every event it sees."""

    def __init__(self) -> None:
        self.log = EVENTS.setdefault(f"run-{next(_runs)}", [])

    async def __call__(self, event: HookEvent, mailbox: WorkerMailbox) -> None:
        assert event.task_id == mailbox.task_id
        await asyncio.sleep(0)
        self.log.append((event.pod, event.point, dict(event.info)))


async def run_both_sides(
    protocol: TaskProtocol, data: Mapping[str, ArraySource], hooks: Callable[[], HookSet]
) -> tuple[Any, dict[str, Any]]:
    """The modeller's and every pod's side of ``protocol`` on one in-memory hub.

    Returns the modeller's result and what each pod's worker side released.
    """
    hub = MemoryHub()
    routers = [TaskRouter(m) for m in connect_federation(hub, "modeller", data).values()]
    for router in routers:
        router.start()
    modeller = ModellerMailbox(routers[0], routers[0].open_channel("task"), list(data))
    workers = {
        pod: protocol.run_worker(
            WorkerMailbox(router, router.open_channel("task"), "modeller"),
            WorkerContext(pod, source, hooks=hooks()),
        )
        for router, (pod, source) in zip(routers[1:], data.items(), strict=True)
    }

    async def modeller_side() -> Any:
        result = await protocol.run_modeller(modeller, ModellerContext())
        await modeller.broadcast(MessageType.TASK_COMPLETE)
        return result

    try:
        result, *released = await asyncio.gather(modeller_side(), *workers.values())
    finally:
        for router in routers:
            await router.close()
        await hub.close()
    return result, dict(zip(workers, released, strict=True))


async def test_fedavg_with_the_default_hooks_shows_epochs_and_batches_on_the_modeller() -> None:
    events = PodEvents()

    async with LocalFederation(pods()) as federation:
        federation.modeller.subscribe(events)
        await federation.run(fedavg())

    seen = events.of("progress")
    for pod, batches in BATCHES.items():
        bodies = [body for sender, body in seen if sender == pod]
        epoch_ends = [(b["round"], b["epoch"], b["step"]) for b in bodies if "accuracy" in b]
        assert epoch_ends == [
            (r, e, (e + 1) * batches) for r in range(ROUNDS) for e in range(TRAINING.epochs)
        ]
        totals = {"epochs": TRAINING.epochs, "batches": batches, "steps": 2 * batches}
        assert all(b.items() >= totals.items() for b in bodies)
        # the first batch of the task is always sent; the throttle keeps most of the others
        first = bodies[0]
        assert (first["round"], first["epoch"], first["batch"], first["step"]) == (0, 0, 0, 1)
        assert isinstance(first["loss"], float) and first["loss"] > 0
        assert len(bodies) < ROUNDS * TRAINING.epochs * (batches + 1)
        assert not any("train_samples" in b or "released" in b for b in bodies)


async def test_analytics_with_the_default_hooks_reports_each_released_stage() -> None:
    frames = {
        pod: pd.DataFrame({"value": np.arange(rows, dtype=float)}) for pod, rows in SIZES.items()
    }
    events = PodEvents()

    request = AnalyticsRequest(statistics=("mean", "histogram"), columns=("value",))
    async with LocalFederation(
        {pod: TableSource(frame) for pod, frame in frames.items()}
    ) as federation:
        federation.modeller.subscribe(events)
        await federation.run(Analytics(request=request))

    seen = events.of("progress")
    # each stage is reported before its results, so the modeller sees both before it ends
    for pod in SIZES:
        assert [body for sender, body in seen if sender == pod] == [
            {"stage": "ranges"},
            {"stage": "partials"},
        ]


async def test_a_registered_hook_sees_the_life_cycle_in_order_with_its_info() -> None:
    EVENTS.clear()
    _, released = await run_both_sides(
        fedavg(), pods(), lambda: build_hooks(["test-recorder", "log"])
    )
    assert len(EVENTS) == len(SIZES)
    for log in EVENTS.values():
        pod = log[0][0]
        assert all(sender == pod for sender, _, _ in log)
        batches = BATCHES[pod]
        points = [point for _, point, _ in log]
        one_epoch = [
            HookPoint.EPOCH_START,
            *[HookPoint.BATCH_END] * batches,
            HookPoint.EPOCH_END,
        ]
        assert points == [
            HookPoint.INIT_START,
            HookPoint.INIT_END,
            HookPoint.RUN_START,
            *one_epoch * TRAINING.epochs * ROUNDS,
            HookPoint.RUN_END,
        ]
        infos = [info for _, _, info in log]
        assert infos[0] == infos[1] == infos[2] == {"protocol": "fedavg"}
        assert infos[-1] == {"protocol": "fedavg", "released": released[pod]}
        assert released[pod] == {"rounds": [0, 1], "train_samples": TRAIN_ROWS[pod]}
        batch_infos = [info for (_, point, info) in log if point is HookPoint.BATCH_END]
        assert [(i["round"], i["epoch"], i["batch"], i["step"]) for i in batch_infos] == [
            (r, e, b, e * batches + b + 1)
            for r in range(ROUNDS)
            for e in range(TRAINING.epochs)
            for b in range(batches)
        ]
        assert all(isinstance(i["loss"], float) for i in batch_infos)
        ends = [info for (_, point, info) in log if point is HookPoint.EPOCH_END]
        assert all(0.0 <= end["accuracy"] <= 1.0 and end["loss"] > 0 for end in ends)


async def test_hooks_do_not_change_what_fedavg_learns() -> None:
    async def through_the_pods() -> FedAvgResult:
        async with LocalFederation(pods()) as federation:
            result = (await federation.run(fedavg())).result
            assert isinstance(result, FedAvgResult)
            return result

    plain, _ = await run_both_sides(fedavg(), pods(), HookSet)
    hooked, _ = await run_both_sides(
        fedavg(), pods(), lambda: build_hooks(["test-recorder", "log", "progress"])
    )
    default = await through_the_pods()
    for result in (hooked, default):
        assert result.parameters.keys() == plain.parameters.keys()
        for name, values in plain.parameters.items():
            assert result.parameters[name].tobytes() == values.tobytes(), name
        assert [r.aggregated for r in result.history] == [r.aggregated for r in plain.history]
