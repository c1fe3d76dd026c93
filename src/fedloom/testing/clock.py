"""A clock that moves only when a test moves it."""

from __future__ import annotations

import math
import threading


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
