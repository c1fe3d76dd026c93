"""The pod's verdict on a task child, on a fake clock: no processes, no sleeping."""

from __future__ import annotations

import asyncio

import pytest

from fedloom.errors import AbortReason
from fedloom.testing import FakeClock, virtual_loop
from fedloom.worker._heartbeat import NO_BEAT, Liveness, tick


def test_a_beating_child_lives_and_a_silent_one_hangs_after_hang_seconds() -> None:
    clock = FakeClock(1000.0)
    liveness = Liveness(10.0, clock=clock)
    beat = clock.advance(1.0)
    clock.advance(10.0)
    assert liveness.verdict(beat, started=True) is None, "exactly hang_seconds is not hung"
    clock.advance(0.001)
    failure = liveness.verdict(beat, started=True)
    assert failure is not None and failure.reason is AbortReason.WORKER_UNRESPONSIVE
    assert "for 10 s" in failure.message
    assert liveness.verdict(clock(), started=True) is None, "a fresh beat revives it"


def test_a_child_gets_the_start_up_allowance_before_its_first_beat() -> None:
    clock = FakeClock()
    liveness = Liveness(1.0, startup_seconds=120.0, clock=clock)
    clock.advance(120.0)
    assert liveness.verdict(NO_BEAT, started=True) is None
    clock.advance(0.5)
    failure = liveness.verdict(NO_BEAT, started=True)
    assert failure is not None and failure.reason is AbortReason.WORKER_UNRESPONSIVE
    assert "did not start within 120 s" in failure.message


def test_no_task_start_within_the_timeout_is_the_modellers_fault() -> None:
    clock = FakeClock()
    liveness = Liveness(5.0, clock=clock)
    clock.advance(3.0)
    liveness.expect_start(30.0)  # counted from when it is expected, not from the spawn
    clock.advance(30.0)
    assert liveness.verdict(clock(), started=False) is None
    clock.advance(1.0)
    failure = liveness.verdict(clock(), started=False)
    assert failure is not None and failure.reason is AbortReason.MODELLER_TIMEOUT
    assert liveness.verdict(clock(), started=True) is None, "once started, no deadline"


@pytest.mark.parametrize("interval", [1.0, 8.0])
@pytest.mark.virtual_time(start=50.0)
async def test_the_child_ticks_four_times_per_interval_on_its_loop(interval: float) -> None:
    class Beat:
        value = NO_BEAT

    loop, beat, seen = virtual_loop(), Beat(), []
    ticking = asyncio.ensure_future(tick(beat, interval, clock=loop.time))
    await asyncio.sleep(interval / 8)  # read between ticks, never on one
    for _ in range(5):
        seen.append(beat.value)
        await asyncio.sleep(interval / 4)
    ticking.cancel()
    assert seen == [50.0 + i * interval / 4 for i in range(5)]
