"""Clocks that move only when a test moves them: a plain one, and an event loop's."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any, TypeVar, TypeVarTuple

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class FakeClock:
    """Stands in for ``time.monotonic``/``time.time`` wherever fedloom takes a ``clock``.

    Calling it returns the current reading; :meth:`advance` moves it forward. Safe to read
    and advance from several threads.

    Raises:
        ValueError: a start or step that is not a finite number, or a step backwards.
    """

    def __init__(self, start: float = 0.0) -> None:
        if not math.isfinite(start):
            raise ValueError(f"a clock starts at a finite time, got {start!r}")
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (>= 0) and return the new reading."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(f"a clock only moves forward, got a step of {seconds!r}")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, now: float) -> None:
        """Move to the reading ``now`` (never backwards)."""
        if not math.isfinite(now):
            raise ValueError(f"a clock reads a finite time, got {now!r}")
        with self._lock:
            if now < self._now:
                raise ValueError(f"a clock only moves forward: {now!r} < {self._now!r}")
            self._now = float(now)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock jumps ahead whenever nothing is ready to run.

    fedloom's async code takes its time from the running loop (``loop.time()``), and the
    loop's timers decide every time-out, so under this loop a 30 s request time-out ends
    at once and is measured as exactly 30 s: unit tests assert times without sleeping or
    bounding the wall clock (trio's ``MockClock`` with autojump). I/O that is ready is
    still served; the clock only moves when the loop would otherwise block waiting for a
    timer, and never while work it gave to a thread (``asyncio.to_thread``,
    ``run_in_executor``) is still running: time passes only when everyone waits.
    :meth:`advance` moves it by hand (code that holds the loop busy for a while).
    """

    def __init__(self, start: float = 0.0) -> None:
        super().__init__()
        self.clock = FakeClock(start)
        self._in_threads = 0
        selector: Any = getattr(self, "_selector")  # noqa: B009 - private in the stubs
        real_select: Callable[[float | None], list[Any]] = selector.select

        def select(timeout: float | None = None) -> list[Any]:
            ready = real_select(0)
            if ready:
                return ready
            if timeout is None or self._in_threads:  # only I/O or a thread can wake it now
                return real_select(None if timeout is None else 0.01)
            if timeout > 0:
                self.clock.advance(timeout)
            return []

        selector.select = select

    def time(self) -> float:
        return self.clock()

    def run_in_executor(
        self, executor: Executor | None, func: Callable[[*Ts], T], *args: *Ts
    ) -> asyncio.Future[T]:
        """Run ``func`` in a thread; virtual time stands still until it returns."""
        future = super().run_in_executor(executor, func, *args)
        self._in_threads += 1

        def done(_: object) -> None:
            self._in_threads -= 1

        future.add_done_callback(done)
        return future

    def advance(self, seconds: float) -> float:
        """Move the loop's clock forward by ``seconds`` (as if the loop was busy)."""
        return self.clock.advance(seconds)


def run_in_virtual_time(main: Coroutine[Any, Any, T], *, start: float = 0.0) -> T:
    """``asyncio.run(main)`` on a :class:`VirtualTimeLoop`."""
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(start)) as runner:
        return runner.run(main)


def virtual_loop() -> VirtualTimeLoop:
    """The running :class:`VirtualTimeLoop`.

    Raises:
        RuntimeError: the running loop keeps real time.
    """
    loop = asyncio.get_running_loop()
    if not isinstance(loop, VirtualTimeLoop):
        raise RuntimeError("not running under fedloom.testing.run_in_virtual_time")
    return loop
