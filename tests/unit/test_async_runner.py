"""The conftest runner's ``virtual_time`` marker: which loop, which clock, which bounds."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fedloom.testing._clock import VirtualTimeLoop, virtual_loop

pytest_plugins = ["pytester"]

_CONFTEST = Path(__file__).parents[1] / "conftest.py"


@pytest.mark.virtual_time
async def test_a_marked_test_runs_on_a_virtual_time_loop() -> None:
    assert isinstance(asyncio.get_running_loop(), VirtualTimeLoop)
    await asyncio.sleep(30)  # at once: only the loop's clock moves
    assert virtual_loop().time() == 30.0


@pytest.mark.virtual_time(start=1000.0)
async def test_start_sets_the_first_reading() -> None:
    assert asyncio.get_running_loop().time() == 1000.0


async def test_an_unmarked_test_keeps_real_time() -> None:
    assert not isinstance(asyncio.get_running_loop(), VirtualTimeLoop)


def _outcome(pytester: pytest.Pytester, test: str) -> pytest.RunResult:
    pytester.makeconftest(_CONFTEST.read_text())
    pytester.makepyfile(test)
    return pytester.runpytest_inprocess("--strict-markers", "-p", "no:cacheprovider")


def test_the_bound_holds_on_the_loops_clock(pytester: pytest.Pytester) -> None:
    result = _outcome(
        pytester,
        """
import asyncio
import pytest

@pytest.mark.virtual_time
@pytest.mark.async_timeout(20)
async def test_stuck_on_timers():
    while True:
        await asyncio.sleep(5)
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*TimeoutError*"])


def test_the_bound_holds_on_the_wall_clock(pytester: pytest.Pytester) -> None:
    # virtual time stands still while a thread works, so only the wall clock can end this;
    # the thread is released as soon as the test is cancelled (a short real wait)
    result = _outcome(
        pytester,
        """
import asyncio
import threading
import pytest

@pytest.mark.virtual_time
@pytest.mark.async_timeout(0.2)
async def test_stuck_on_a_thread():
    released = threading.Event()
    try:
        await asyncio.to_thread(released.wait)
    finally:
        released.set()
""",
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*the test ran past 0.2 s of real time*"])
