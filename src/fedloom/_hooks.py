"""Worker-side hooks: code run at the life-cycle points of a task on a pod.

A protocol's worker side fires a :class:`HookPoint` at each step of its life (init, run,
each training epoch and batch, the end of a resilience phase, progress). The hooks of a task
are named, never passed as objects: the worker side of a task runs in a spawned child that
rebuilds everything from names, so it gets hook *names* and calls :func:`build_hooks`, which
looks each one up in the closed :data:`HOOKS` registry (an unknown name is an
:class:`~fedloom.errors.UnknownNameError`, which the child turns into a task abort).

A hook is a :class:`Hook`: it says which points it listens to and is called, sync or async,
with a :class:`HookEvent` and the task's :class:`~fedloom.transport.WorkerMailbox`, through
which it may send telemetry to the modeller. A hook that raises never breaks the task: the
failure is logged and counted (:meth:`HookSet.statistics`) and the task goes on. Hooks run
on the task's event loop and must return promptly. Training runs in a worker thread; its
epoch and batch callbacks reach the hooks through a :class:`ThreadBridge`, which hands the
events to the loop in order (never blocking the training thread).

Built-in hooks:

- ``"progress"`` (:class:`ProgressHook`): PROGRESS messages with round/epoch/batch/step to
  the modeller (PROGRESS events on its event stream, the CLI's bar per pod). Batch ends are
  throttled (at most :data:`DEFAULT_PROGRESS_RATE` a second per task); epoch ends and
  PROGRESS points are always sent. Only the keys in :data:`PROGRESS_KEYS` leave the pod.
- ``"log"`` (:class:`LogHook`): logs each event (batch ends at DEBUG, the rest at INFO).

The pod database is written by the pod's parent process, which owns the store; the child
never writes it, so these are points the pod acts on rather than hooks:

- *save results*: ``RUN_END``'s ``info["released"]`` is the record the worker released (what
  ``run_worker`` returns); the pod saves it with the task run when the worker returns.
- *save failed files*: ``RESILIENCE_END`` is fired by every batched protocol
  (:class:`~fedloom.protocols.BatchedProtocol`) once its resilience phase has retried the
  failed files alone; the pod records what still failed, for a later force-rerun.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import types
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

from fedloom._registry import Registry, check_name
from fedloom.errors import ConfigError, FedloomError
from fedloom.session import WorkerMailbox

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PROGRESS_RATE",
    "DEFAULT_WORKER_HOOKS",
    "HOOKS",
    "PROGRESS_KEYS",
    "TRAINING_POINTS",
    "BoundHooks",
    "Hook",
    "HookEvent",
    "HookFactory",
    "HookPoint",
    "HookSet",
    "HookStatistics",
    "LogHook",
    "ProgressHook",
    "ThreadBridge",
    "build_hooks",
    "default_worker_hooks",
    "register_hook",
]


class HookPoint(StrEnum):
    """The life-cycle points of a task's worker side, in the order they happen."""

    INIT_START = "init_start"
    """Before the worker loads its data and builds its model."""
    INIT_END = "init_end"
    """The worker is ready to run."""
    RUN_START = "run_start"
    """Before the worker answers the modeller's first step."""
    EPOCH_START = "epoch_start"
    """A local training epoch starts (info: round, epoch, epochs, batches, steps)."""
    BATCH_END = "batch_end"
    """After each optimizer step (info: round, epoch, batch, step, loss, ...)."""
    EPOCH_END = "epoch_end"
    """A local training epoch ended (info: round, epoch, step, loss, accuracy, ...)."""
    RESILIENCE_END = "resilience_end"
    """The batched flow's resilience phase ended (fired by every BatchedProtocol)."""
    PROGRESS = "progress"
    """A protocol step that is not an epoch or a batch (info: e.g. stage)."""
    RUN_END = "run_end"
    """The modeller completed the task (info: released, the record the pod saves)."""


TRAINING_POINTS = frozenset({HookPoint.EPOCH_START, HookPoint.BATCH_END, HookPoint.EPOCH_END})
"""The points fired from the training thread (through a :class:`ThreadBridge`)."""

DEFAULT_WORKER_HOOKS: tuple[str, ...] = ("progress",)
"""The hooks a pod runs for every task unless it is configured otherwise."""

DEFAULT_PROGRESS_RATE = 5.0
"""The most batch-level PROGRESS messages a second the ``"progress"`` hook sends per task."""

PROGRESS_KEYS = (
    "round",
    "epoch",
    "epochs",
    "batch",
    "batches",
    "step",
    "steps",
    "loss",
    "accuracy",
    "stage",
)
"""The info keys the ``"progress"`` hook sends; nothing else leaves the pod through it."""


@dataclass(frozen=True)
class HookEvent:
    """One life-cycle point of one task, as a hook sees it.

    ``info`` is a small JSON-able, read-only map, e.g. ``{"round": 0, "epoch": 1,
    "batch": 3, "step": 7, "loss": 0.41}``. Round, epoch and batch are 0-based indices;
    ``step`` counts the optimizer steps done in the round; ``epochs``, ``batches`` (per
    epoch) and ``steps`` (per round) are totals.
    """

    point: HookPoint
    task_id: str
    pod: str
    info: Mapping[str, Any]


class Hook(ABC):
    """Base of every hook: a callable that listens to some of the :class:`HookPoint` s."""

    points: ClassVar[frozenset[HookPoint]] = frozenset(HookPoint)
    """The points this hook is called at (all of them unless a subclass narrows it)."""

    @abstractmethod
    def __call__(self, event: HookEvent, mailbox: WorkerMailbox) -> Awaitable[None] | None:
        """Handle ``event``; may be ``async``. Whatever it raises is logged and ignored."""


HookFactory = Callable[[], Hook]
"""What :data:`HOOKS` holds: a fresh hook per task (hooks may keep per-task state)."""

HOOKS: Registry[HookFactory] = Registry("hook")
"""The closed registry of hook factories; see :func:`register_hook`."""

F = TypeVar("F", bound=HookFactory)


def register_hook(name: str) -> Callable[[F], F]:
    """Decorator: register a hook factory (usually a :class:`Hook` subclass) as ``name``.

    A plugin registers its hooks at import time in every process that runs workers, so that
    :func:`build_hooks` finds them by name in the spawned child too.

    Raises:
        UnknownNameError: ``name`` is not a well-formed registry name.
        DuplicateNameError: ``name`` is already registered.
    """
    check_name(HOOKS.kind, name)

    def decorator(factory: F) -> F:
        HOOKS.add(name, factory)
        return factory

    return decorator


@dataclass(frozen=True)
class HookStatistics:
    """How often a :class:`HookSet` fired and how often each of its hooks failed."""

    fired: int
    failures: Mapping[str, int]


class HookSet:
    """The hooks of one task, in the order they run at each point.

    ``HookSet()`` is empty: firing it does nothing, and a protocol skips the work of
    preparing events (e.g. training callbacks) when no hook listens to their points.
    """

    def __init__(self, hooks: Sequence[tuple[str, Hook]] = ()) -> None:
        self._hooks = tuple(hooks)
        self._listeners = {
            point: tuple((name, hook) for name, hook in self._hooks if point in hook.points)
            for point in HookPoint
        }
        self._fired = 0
        self._failures: dict[str, int] = {}

    @property
    def names(self) -> tuple[str, ...]:
        """The registered names of the hooks, in order (what a child needs to rebuild them)."""
        return tuple(name for name, _ in self._hooks)

    def __len__(self) -> int:
        return len(self._hooks)

    def __repr__(self) -> str:
        return f"HookSet({list(self.names)!r})"

    def wants(self, point: HookPoint) -> bool:
        """Whether any hook listens to ``point``."""
        return bool(self._listeners[point])

    def bind(self, mailbox: WorkerMailbox, pod: str) -> BoundHooks:
        """These hooks for one task: the mailbox they may send through and the pod's name."""
        return BoundHooks(self, mailbox, pod)

    def statistics(self) -> HookStatistics:
        """Events fired (with at least one listener) and failures per hook name."""
        return HookStatistics(self._fired, dict(self._failures))

    async def _fire(self, event: HookEvent, mailbox: WorkerMailbox) -> None:
        self._fired += 1
        for name, hook in self._listeners[event.point]:
            try:
                outcome = hook(event, mailbox)
                if outcome is not None:
                    await outcome
            except Exception as exc:  # a hook must never break the task
                self._failed(name, event, exc)

    def _failed(self, name: str, event: HookEvent, exc: Exception) -> None:
        count = self._failures[name] = self._failures.get(name, 0) + 1
        # a hook failing at every batch would flood the log: the first failure gets the
        # traceback, the rest a DEBUG line (the count is in statistics())
        if count == 1:
            logger.warning(
                "hook %r failed at %s of task %s on pod %r (the task goes on): %s",
                name,
                event.point.value,
                event.task_id,
                event.pod,
                exc,
                exc_info=exc,
            )
        else:
            logger.debug("hook %r failed again (%d times) at %s: %s", name, count, event.point, exc)


class BoundHooks:
    """A :class:`HookSet` bound to one task's mailbox and pod: what protocols fire."""

    def __init__(self, hooks: HookSet, mailbox: WorkerMailbox, pod: str) -> None:
        self.hooks = hooks
        self.mailbox = mailbox
        self.pod = pod

    def wants(self, point: HookPoint) -> bool:
        """Whether any hook listens to ``point``."""
        return self.hooks.wants(point)

    async def fire(self, point: HookPoint, **info: Any) -> None:
        """Call every hook listening to ``point``, in order; never raises for a hook."""
        if not self.hooks.wants(point):
            return
        # one read-only view for all hooks, so that one hook cannot change what the next sees
        event = HookEvent(point, self.mailbox.task_id, self.pod, types.MappingProxyType(info))
        await self.hooks._fire(event, self.mailbox)

    @asynccontextmanager
    async def bridge(self) -> AsyncIterator[ThreadBridge]:
        """A :class:`ThreadBridge` for the block; its events are all fired when it ends.

        Use it around ``asyncio.to_thread(...)``: leaving the block normally waits until the
        hooks have seen every event the thread fired; leaving it with an exception drops
        the events not fired yet.
        """
        bridge = ThreadBridge(self)
        try:
            yield bridge
        except BaseException:
            await bridge._stop(drain=False)
            raise
        await bridge._stop(drain=True)


_Item = tuple[HookPoint, dict[str, Any]] | None


class ThreadBridge:
    """Fires hook events from another thread (training) on the task's event loop, in order.

    Made on the loop (it captures the running loop); :meth:`fire` may then be called from
    any thread and never blocks: it queues the event for one pump task on the loop, which
    fires the events one after the other. With no listening hook nothing is queued and no
    pump runs.
    """

    def __init__(self, hooks: BoundHooks) -> None:
        self._hooks = hooks
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None
        if len(hooks.hooks):
            self._pump = self._loop.create_task(self._run(), name="hooks:bridge")

    def wants(self, point: HookPoint) -> bool:
        """Whether any hook listens to ``point`` (callers skip building callbacks if not)."""
        return self._pump is not None and self._hooks.wants(point)

    def fire(self, point: HookPoint, **info: Any) -> None:
        """Queue ``point`` with ``info`` for the hooks; safe from any thread, never blocks."""
        if self._pump is None or self._pump.done() or not self._hooks.wants(point):
            return
        # a closed loop means the task is gone, and its telemetry with it
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, (point, info))

    async def _run(self) -> None:
        while (item := await self._queue.get()) is not None:
            await self._hooks.fire(item[0], **item[1])

    async def _stop(self, *, drain: bool) -> None:
        pump = self._pump
        if pump is None:
            return
        if drain:
            # runs on the loop after to_thread returned: every call_soon_threadsafe of the
            # thread ran before, so the sentinel comes after the thread's last event
            self._queue.put_nowait(None)
        else:
            pump.cancel()
        try:
            await asyncio.wait({pump})
        except asyncio.CancelledError:
            pump.cancel()
            raise


# --- building -----------------------------------------------------------------------------


def build_hooks(names: Sequence[str]) -> HookSet:
    """A fresh :class:`HookSet` made of the hooks registered as ``names``, in that order.

    Raises:
        UnknownNameError: a name is malformed or not registered; nothing is imported.
        ConfigError: ``names`` is not a list of names, lists a hook twice, or a factory
            failed or did not make a :class:`Hook`.
    """
    if isinstance(names, str | bytes) or not isinstance(names, Sequence):
        raise ConfigError(f"hooks must be a list of hook names, got {names!r}")
    hooks: list[tuple[str, Hook]] = []
    for name in names:
        factory = HOOKS.get(name)
        if any(name == seen for seen, _ in hooks):
            raise ConfigError(f"hook {name!r} is listed twice; list each hook once")
        try:
            hook = factory()
        except FedloomError:
            raise
        except Exception as exc:
            raise ConfigError(f"hook {name!r} could not be built: {exc}") from exc
        if not isinstance(hook, Hook):
            raise ConfigError(
                f"hook factory {name!r} made a {type(hook).__name__}, not a fedloom.plugins.Hook"
            )
        hooks.append((name, hook))
    return HookSet(hooks)


def default_worker_hooks() -> HookSet:
    """A fresh :class:`HookSet` of :data:`DEFAULT_WORKER_HOOKS`."""
    return build_hooks(DEFAULT_WORKER_HOOKS)


# --- built-in hooks -----------------------------------------------------------------------


@register_hook("progress")
class ProgressHook(Hook):
    """Sends PROGRESS to the modeller: each epoch end and PROGRESS point, batches throttled.

    Only the :data:`PROGRESS_KEYS` of an event's info are sent (a pod's row count, say,
    never leaves it this way); floats are rounded to 4 decimals for display.

    Raises (at construction):
        ConfigError: ``max_per_second`` is not a positive number.
    """

    points = frozenset({HookPoint.BATCH_END, HookPoint.EPOCH_END, HookPoint.PROGRESS})

    def __init__(
        self,
        *,
        max_per_second: float = DEFAULT_PROGRESS_RATE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if (
            isinstance(max_per_second, bool)
            or not isinstance(max_per_second, int | float)
            or not math.isfinite(max_per_second)
            or max_per_second <= 0
        ):
            raise ConfigError(f"max_per_second must be a number > 0, got {max_per_second!r}")
        self._interval = 1.0 / max_per_second
        self._clock = clock
        self._last: float | None = None
        self.skipped = 0
        """Batch events not sent because of the throttle."""

    async def __call__(self, event: HookEvent, mailbox: WorkerMailbox) -> None:
        now = self._clock()
        if (
            event.point is HookPoint.BATCH_END
            and self._last is not None
            and now - self._last < self._interval
        ):
            self.skipped += 1
            return
        self._last = now
        await mailbox.progress(**_progress_fields(event.info))


def _progress_fields(info: Mapping[str, Any]) -> dict[str, float | int | str]:
    fields: dict[str, float | int | str] = {}
    for key in PROGRESS_KEYS:
        value = info.get(key)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, float):
            if math.isfinite(value):
                fields[key] = round(value, 4)
        elif isinstance(value, int | str):
            fields[key] = value
    return fields


@register_hook("log")
class LogHook(Hook):
    """Logs every event to ``fedloom._hooks``: batch ends at DEBUG, the rest at INFO."""

    def __call__(self, event: HookEvent, mailbox: WorkerMailbox) -> None:
        level = logging.DEBUG if event.point is HookPoint.BATCH_END else logging.INFO
        if logger.isEnabledFor(level):
            logger.log(
                level,
                "%s: task %s %s %s",
                event.pod,
                event.task_id,
                event.point.value,
                dict(event.info),
            )
