"""A task child's heartbeat: the child ticks a shared number, the pod judges its age.

Both ends read one clock, ``time.monotonic`` (system-wide on Linux and macOS, so a
reading taken in the child means the same in the pod, and a wall-clock step changes
nothing). :class:`Liveness` takes the clock as an argument, so tests drive it with a
:class:`fedloom.testing.FakeClock`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

from fedloom.errors import AbortReason, WorkerFailedError

Clock = Callable[[], float]
"""Seconds from any fixed origin; only differences are used."""

STARTUP_SECONDS = 120.0
"""How long a fresh child may take to import and send its first heartbeat."""

NO_BEAT = 0.0
"""The heartbeat's value until the child's first tick."""


class Beat(Protocol):
    """The shared number (a ``multiprocessing.Value('d')``)."""

    value: float


class Liveness:
    """The pod's verdict on a child from its heartbeat and the modeller's TASK_START.

    Raises (from :meth:`verdict`, as a returned error):
        WorkerFailedError: see :meth:`verdict`.
    """

    def __init__(
        self,
        hang_seconds: float,
        *,
        startup_seconds: float = STARTUP_SECONDS,
        clock: Clock = time.monotonic,
    ) -> None:
        """Counts the start-up from now (call it when the child is spawned)."""
        self.hang_seconds = hang_seconds
        self.startup_seconds = startup_seconds
        self.clock = clock
        self.spawned_at = clock()
        self._start_deadline: float | None = None
        self._start_timeout = 0.0

    def expect_start(self, timeout: float) -> None:
        """The modeller's TASK_START is due within ``timeout`` seconds from now."""
        self._start_timeout = timeout
        self._start_deadline = self.clock() + timeout

    def verdict(self, beat: float, *, started: bool) -> WorkerFailedError | None:
        """Why the task must end now, or None while the child is alive and on time.

        ``beat`` is the child's last tick (:data:`NO_BEAT` before its first); ``started``
        whether the modeller's TASK_START has arrived. The error's reason says which:
        MODELLER_TIMEOUT (no TASK_START in time), WORKER_UNRESPONSIVE (no first tick
        within the start-up allowance, or none for :attr:`hang_seconds`).
        """
        now = self.clock()
        if not started and self._start_deadline is not None and now > self._start_deadline:
            return WorkerFailedError(
                AbortReason.MODELLER_TIMEOUT,
                f"no TASK_START from the modeller within {self._start_timeout:.0f} s",
            )
        if beat == NO_BEAT:
            if now - self.spawned_at > self.startup_seconds:
                return WorkerFailedError(
                    AbortReason.WORKER_UNRESPONSIVE,
                    f"the worker did not start within {self.startup_seconds:.0f} s",
                )
        elif now - beat > self.hang_seconds:
            return WorkerFailedError(
                AbortReason.WORKER_UNRESPONSIVE,
                f"no heartbeat from the worker for {self.hang_seconds:.0f} s",
            )
        return None


async def tick(beat: Beat, interval: float, clock: Clock = time.monotonic) -> None:
    """The child's side: tick from the event loop, so code that blocks it stops the beat."""
    while True:
        beat.value = clock()
        await asyncio.sleep(interval / 4)
