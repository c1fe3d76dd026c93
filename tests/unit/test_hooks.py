"""Worker hooks: the closed registry, firing, failures, throttling and the thread bridge."""

from __future__ import annotations

import asyncio
import itertools
import logging
import sys
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest

from fedloom._hooks import (
    DEFAULT_WORKER_HOOKS,
    HOOKS,
    Hook,
    HookEvent,
    HookPoint,
    HookSet,
    ProgressHook,
    build_hooks,
    register_hook,
)
from fedloom.algorithms.ml import (
    ModelSpec,
    TrainingConfig,
    build_model,
    state_to_arrays,
    train_local,
)
from fedloom.datasources import ArraySource
from fedloom.errors import ConfigError, DuplicateNameError, UnknownNameError
from fedloom.protocols import WorkerContext
from fedloom.session import WorkerMailbox
from fedloom.testing import FakeClock, connect_federation
from fedloom.transport import Mailbox, MemoryHub, TaskRouter
from fedloom.wire import Message, MessageType

TASK = "task-1"
END = "end-of-test"
_names = itertools.count()


def unique_name() -> str:
    """A fresh registry name: the registry is process-wide and has no way to unregister."""
    return f"test-hook-{next(_names)}"


class Recorder(Hook):
    """Records (its label, point, info) in a shared list."""

    def __init__(
        self,
        log: list[tuple[str, HookPoint, dict[str, Any]]],
        label: str,
        points: frozenset[HookPoint] | None = None,
    ) -> None:
        self.log = log
        self.label = label
        if points is not None:
            self.points = points  # type: ignore[misc]

    def __call__(self, event: HookEvent, mailbox: WorkerMailbox) -> None:
        assert (event.task_id, event.pod) == (TASK, "pod-a")
        self.log.append((self.label, event.point, dict(event.info)))


class AsyncRecorder(Recorder):
    async def __call__(self, event: HookEvent, mailbox: WorkerMailbox) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        super().__call__(event, mailbox)


class Raises(Hook):
    def __init__(self, asynchronous: bool = False) -> None:
        self.asynchronous = asynchronous

    def __call__(self, event: HookEvent, mailbox: WorkerMailbox) -> Any:
        if self.asynchronous:
            return self._fail()
        raise RuntimeError("sync hook broke")

    async def _fail(self) -> None:
        raise RuntimeError("async hook broke")


@asynccontextmanager
async def task_mailboxes() -> AsyncIterator[tuple[WorkerMailbox, Mailbox]]:
    """A pod's WorkerMailbox on a real in-memory hub, and the modeller's raw mailbox."""
    hub = MemoryHub()
    modeller, pod = connect_federation(hub, "modeller", ["pod-a"]).values()
    router = TaskRouter(pod)
    router.start()
    try:
        yield WorkerMailbox(router, router.open_channel(TASK), "modeller"), modeller
    finally:
        await router.close()
        await hub.close()


async def received_progress(worker: WorkerMailbox, modeller: Mailbox) -> list[Any]:
    """The bodies of the PROGRESS messages the modeller got so far."""
    await worker.send(MessageType.RESULTS, END)
    bodies: list[Any] = []
    while True:
        message: Message = await modeller.receive(timeout=5)
        if message.body == END:
            return bodies
        assert message.type is MessageType.PROGRESS
        bodies.append(message.body)


# --- registry -----------------------------------------------------------------------------


def test_built_in_hooks_are_registered_and_progress_is_the_pod_default() -> None:
    assert {"progress", "log"} <= set(HOOKS.names())
    assert DEFAULT_WORKER_HOOKS == ("progress",)
    hooks = build_hooks(["progress", "log"])
    assert hooks.names == ("progress", "log") and len(hooks) == 2
    assert len(build_hooks(())) == 0
    assert WorkerContext("pod-a", ArraySource(np.zeros((2, 1)))).hooks.names == ("progress",)


@pytest.mark.parametrize(
    "name", ["os.system", "builtins.eval", "fedloom._hooks.LogHook", "Progress", "", None, 3]
)
def test_a_malformed_or_unknown_hook_name_is_refused_without_importing(name: object) -> None:
    before = set(sys.modules)
    with pytest.raises(UnknownNameError):
        build_hooks([name])  # type: ignore[list-item]
    assert set(sys.modules) == before


def test_an_unknown_hook_lists_the_registered_ones() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown hook 'nope'; registered: .*progress"):
        build_hooks(["progress", "nope"])


def test_build_hooks_refuses_a_bare_string_and_a_repeated_name() -> None:
    with pytest.raises(ConfigError, match="list of hook names"):
        build_hooks("progress")
    with pytest.raises(ConfigError, match="listed twice"):
        build_hooks(["log", "log"])


def test_a_plugin_hook_is_registered_by_name_and_built_fresh_per_task() -> None:
    name = unique_name()

    @register_hook(name)
    class Plugin(Hook):
        def __call__(self, event: HookEvent, mailbox: WorkerMailbox) -> None:
            pass

    one, two = build_hooks([name]), build_hooks([name])
    assert one.names == (name,)
    assert one._hooks[0][1] is not two._hooks[0][1], "hooks may keep per-task state"
    with pytest.raises(DuplicateNameError):
        register_hook(name)(Plugin)
    with pytest.raises(UnknownNameError):
        register_hook("my.plugin.Hook")


def test_a_factory_that_fails_or_makes_no_hook_is_a_config_error() -> None:
    broken, wrong = unique_name(), unique_name()

    def fails() -> Hook:
        raise OSError("no such device")

    register_hook(broken)(fails)
    HOOKS.add(wrong, lambda: "not a hook")  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigError, match=f"hook '{broken}' could not be built: no such device"):
        build_hooks([broken])
    with pytest.raises(ConfigError, match=r"made a str, not a fedloom\.plugins\.Hook"):
        build_hooks([wrong])


# --- firing -------------------------------------------------------------------------------


async def test_hooks_fire_in_order_sync_and_async_and_only_at_their_points() -> None:
    log: list[tuple[str, HookPoint, dict[str, Any]]] = []
    hooks = HookSet(
        [
            ("first", AsyncRecorder(log, "first")),
            ("ends", Recorder(log, "ends", frozenset({HookPoint.RUN_END}))),
            ("last", Recorder(log, "last")),
        ]
    )

    async with task_mailboxes() as (worker, _):
        bound = hooks.bind(worker, "pod-a")
        await bound.fire(HookPoint.RUN_START)
        await bound.fire(HookPoint.RUN_END, released={"rows": 3})
    assert log == [
        ("first", HookPoint.RUN_START, {}),
        ("last", HookPoint.RUN_START, {}),
        ("first", HookPoint.RUN_END, {"released": {"rows": 3}}),
        ("ends", HookPoint.RUN_END, {"released": {"rows": 3}}),
        ("last", HookPoint.RUN_END, {"released": {"rows": 3}}),
    ]
    assert hooks.wants(HookPoint.BATCH_END) and hooks.statistics().fired == 2


async def test_an_empty_hook_set_wants_nothing_and_fires_nothing() -> None:
    hooks = HookSet()

    async with task_mailboxes() as (worker, modeller):
        bound = hooks.bind(worker, "pod-a")
        for point in HookPoint:
            await bound.fire(point, step=1)
        assert await received_progress(worker, modeller) == []
    assert not any(hooks.wants(point) for point in HookPoint)
    assert hooks.statistics().fired == 0


async def test_a_raising_hook_is_logged_once_counted_and_the_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log: list[tuple[str, HookPoint, dict[str, Any]]] = []

    class Mutates(Hook):
        def __call__(self, event: HookEvent, mailbox: WorkerMailbox) -> None:
            event.info["loss"] = -1.0  # type: ignore[index]

    hooks = HookSet(
        [
            ("sync", Raises()),
            ("async", Raises(asynchronous=True)),
            ("mutates", Mutates()),
            ("recorder", Recorder(log, "recorder")),
        ]
    )

    with caplog.at_level(logging.DEBUG, logger="fedloom._hooks"):
        async with task_mailboxes() as (worker, _):
            bound = hooks.bind(worker, "pod-a")
            for batch in range(3):
                await bound.fire(HookPoint.BATCH_END, batch=batch, loss=0.5)
    assert [info for _, _, info in log] == [{"batch": b, "loss": 0.5} for b in range(3)]
    assert hooks.statistics().failures == {"sync": 3, "async": 3, "mutates": 3}
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert sorted(r.getMessage().split(" failed")[0] for r in warnings) == [
        "hook 'async'",
        "hook 'mutates'",
        "hook 'sync'",
    ]
    assert all("the task goes on" in r.getMessage() and r.exc_info for r in warnings)


async def test_the_log_hook_logs_batches_at_debug_and_the_rest_at_info(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooks = build_hooks(["log"])

    with caplog.at_level(logging.DEBUG, logger="fedloom._hooks"):
        async with task_mailboxes() as (worker, _):
            bound = hooks.bind(worker, "pod-a")
            await bound.fire(HookPoint.BATCH_END, batch=1)
            await bound.fire(HookPoint.EPOCH_END, epoch=0)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, f"pod-a: task {TASK} batch_end {{'batch': 1}}"),
        (logging.INFO, f"pod-a: task {TASK} epoch_end {{'epoch': 0}}"),
    ]


# --- the progress hook --------------------------------------------------------------------


async def test_progress_throttles_batches_but_always_sends_epoch_ends_and_progress() -> None:
    clock = FakeClock(100.0)
    progress = ProgressHook(max_per_second=5, clock=clock)
    hooks = HookSet([("progress", progress)])

    async with task_mailboxes() as (worker, modeller):
        bound = hooks.bind(worker, "pod-a")
        for step, at in enumerate([0.0, 0.1, 0.19, 0.2, 0.25, 0.39, 0.5]):
            clock.set(100.0 + at)
            await bound.fire(HookPoint.BATCH_END, batch=step, step=step + 1)
        clock.set(100.51)
        await bound.fire(HookPoint.EPOCH_END, epoch=0, step=7)
        await bound.fire(HookPoint.EPOCH_START, epoch=1)  # not a progress point
        clock.set(100.52)
        await bound.fire(HookPoint.PROGRESS, stage="partials")
        await bound.fire(HookPoint.BATCH_END, batch=7, step=8)  # 0.01 s after the last
        sent = await received_progress(worker, modeller)
    assert sent == [
        {"batch": 0, "step": 1},
        {"batch": 3, "step": 4},
        {"batch": 6, "step": 7},
        {"epoch": 0, "step": 7},
        {"stage": "partials"},
    ]
    assert progress.skipped == 5


async def test_progress_sends_only_its_keys_and_rounds_floats() -> None:
    hooks = HookSet([("progress", ProgressHook())])

    async with task_mailboxes() as (worker, modeller):
        await hooks.bind(worker, "pod-a").fire(
            HookPoint.EPOCH_END,
            round=2,
            epoch=1,
            loss=0.123456789,
            accuracy=float("nan"),
            rows=37,
            released={"rows": 37},
            step=True,
        )
        sent = await received_progress(worker, modeller)
    assert sent == [{"round": 2, "epoch": 1, "loss": 0.1235}]


@pytest.mark.parametrize("rate", [0, -1.0, float("inf"), True, "5"])
def test_progress_refuses_a_bad_rate(rate: Any) -> None:
    with pytest.raises(ConfigError, match="max_per_second"):
        ProgressHook(max_per_second=rate)


# --- the thread bridge --------------------------------------------------------------------


async def test_the_bridge_delivers_thread_events_in_order_before_the_block_ends() -> None:
    log: list[tuple[str, HookPoint, dict[str, Any]]] = []
    hooks = HookSet([("batches", AsyncRecorder(log, "batches", frozenset({HookPoint.BATCH_END})))])
    threads: set[int] = set()

    async with task_mailboxes() as (worker, _):
        bound = hooks.bind(worker, "pod-a")
        async with bound.bridge() as bridge:
            assert bridge.wants(HookPoint.BATCH_END)
            assert not bridge.wants(HookPoint.EPOCH_END)

            def train() -> None:
                threads.add(threading.get_ident())
                for batch in range(200):
                    bridge.fire(HookPoint.BATCH_END, batch=batch)
                    bridge.fire(HookPoint.EPOCH_END, batch=batch)  # nobody listens

            await asyncio.to_thread(train)
        assert len(log) == 200, "every event is fired when the block ends"
    assert threading.get_ident() not in threads
    assert [info["batch"] for _, _, info in log] == list(range(200))
    assert hooks.statistics().fired == 200


async def test_a_bridge_without_hooks_has_no_pump_and_ignores_events() -> None:
    async with (
        task_mailboxes() as (worker, _),
        HookSet().bind(worker, "pod-a").bridge() as bridge,
    ):
        assert bridge._pump is None
        assert not any(bridge.wants(point) for point in HookPoint)
        await asyncio.to_thread(bridge.fire, HookPoint.BATCH_END, batch=0)
        assert bridge._queue.qsize() == 0


async def test_a_failing_block_stops_the_bridge_and_drops_the_events_left() -> None:
    started: list[int] = []

    class Stuck(Hook):
        async def __call__(self, event: HookEvent, mailbox: WorkerMailbox) -> None:
            started.append(event.info["batch"])
            await asyncio.Event().wait()  # a hook that hangs on its first event

    hooks = HookSet([("stuck", Stuck())])

    async with task_mailboxes() as (worker, _):
        with pytest.raises(ZeroDivisionError):
            async with hooks.bind(worker, "pod-a").bridge() as bridge:
                for batch in range(3):
                    await asyncio.to_thread(bridge.fire, HookPoint.BATCH_END, batch=batch)
                1 / 0  # noqa: B018
        assert bridge._pump is not None and bridge._pump.cancelled()
        bridge.fire(HookPoint.BATCH_END, batch=3)  # after the end: ignored, no error
        assert bridge._queue.qsize() == 2, "the two events left were dropped"
    assert started == [0]
    assert hooks.statistics().failures == {}, "being stopped is not a hook failure"


# --- training callbacks -------------------------------------------------------------------

MLP = ModelSpec("mlp", {"in_features": 3, "hidden": [5], "out_features": 2})


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(21, 3)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def trained(**callbacks: Callable[..., None]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    model = build_model(MLP, seed=1)
    config = TrainingConfig(epochs=3, batch_size=8)
    x, y = data()
    metrics = train_local(model, x, y, config, seed=4, **callbacks)
    return metrics, state_to_arrays(model)


def test_epoch_callbacks_frame_the_batches_and_do_not_change_training() -> None:
    calls: list[tuple[Any, ...]] = []
    metrics, state = trained(
        on_epoch_start=lambda epoch: calls.append(("start", epoch)),
        on_batch=lambda epoch, batch, loss: calls.append(("batch", epoch, batch)),
        on_epoch_end=lambda epoch, m: calls.append(("end", epoch, dict(m))),
    )

    def epoch(e: int, end: dict[str, float]) -> Iterator[tuple[Any, ...]]:
        yield ("start", e)
        yield from (("batch", e, b) for b in range(3))
        yield ("end", e, end)

    ends = [call[2] for call in calls if call[0] == "end"]
    assert calls == [c for e in range(3) for c in epoch(e, ends[e])]
    assert ends[-1] == {"loss": metrics["loss"], "accuracy": metrics["accuracy"]}
    plain_metrics, plain_state = trained()
    assert plain_metrics == metrics
    assert all(plain_state[k].tobytes() == v.tobytes() for k, v in state.items())
