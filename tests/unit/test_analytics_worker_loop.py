"""The analytics worker computes off its event loop: in a pod's child that loop beats the
heartbeat, so a long computation on it would get the child killed as unresponsive."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import fedloom.protocols._analytics as analytics_protocol
from fedloom._hooks import HookSet
from fedloom.algorithms._analytics import AnalyticsRequest
from fedloom.datasources import ArraySource
from fedloom.protocols import ModellerContext, WorkerContext
from fedloom.protocols._analytics import Analytics, AnalyticsResult
from fedloom.session import ModellerMailbox, WorkerMailbox
from fedloom.testing import connect_federation
from fedloom.transport import MemoryHub, TaskRouter
from fedloom.wire import MessageType

TASK = "task-1"


def _waits_for_a_tick(
    real: Callable[..., Any], ticked: threading.Event, seen: list[tuple[str, bool]], name: str
) -> Callable[..., Any]:
    """``real``, after waiting (at most 2 s) for the event loop to tick once more: a call
    that blocks the loop waits in vain."""

    def call(*args: Any, **kwargs: Any) -> Any:
        ticked.clear()
        seen.append((name, ticked.wait(2.0)))
        return real(*args, **kwargs)

    return call


@pytest.mark.async_timeout(30)
async def test_the_worker_loop_keeps_ticking_while_statistics_are_computed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ticked = threading.Event()
    seen: list[tuple[str, bool]] = []
    for name in ("column_ranges", "compute_partials"):
        real = getattr(analytics_protocol, name)
        monkeypatch.setattr(analytics_protocol, name, _waits_for_a_tick(real, ticked, seen, name))
    rng = np.random.default_rng(0)
    source = ArraySource(rng.normal(size=(500, 2)), feature_names=("a", "b"))
    protocol = Analytics(
        AnalyticsRequest(per_column={"a": ("histogram", "mean"), "b": ("count",)}), timeout=20
    )

    async def tick() -> None:  # as the child's heartbeat does
        while True:
            ticked.set()
            await asyncio.sleep(0.005)

    hub = MemoryHub()
    routers = [TaskRouter(m) for m in connect_federation(hub, "modeller", ["pod-a"]).values()]
    for router in routers:
        router.start()
    modeller = ModellerMailbox(routers[0], routers[0].open_channel(TASK), ["pod-a"])
    worker = WorkerMailbox(routers[1], routers[1].open_channel(TASK), "modeller")
    context = WorkerContext("pod-a", source, min_rows=1, hooks=HookSet())
    ticking = asyncio.ensure_future(tick())

    async def model() -> AnalyticsResult:
        result = await protocol.run_modeller(modeller, ModellerContext())
        await modeller.broadcast(MessageType.TASK_COMPLETE)
        return result

    try:
        result, record = await asyncio.gather(model(), protocol.run_worker(worker, context))
    finally:
        ticking.cancel()
        for router in routers:
            await router.close()
        await hub.close()
    assert record == {"released": ["ranges", "partials"]}
    assert seen == [("column_ranges", True), ("compute_partials", True)]
    assert result.statistics["b"]["count"] == 500
