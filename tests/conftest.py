"""The harness every test shares: async tests, the ``process`` lane, one hub per session.

* ``async def`` tests run under :func:`asyncio.run`, each in a fresh event loop, bounded
  by :data:`ASYNC_TEST_TIMEOUT` seconds (``@pytest.mark.async_timeout(s)`` changes it) so a
  stuck conversation fails the test instead of hanging the run. It is the one way to run
  async tests here: no plugin, no ``asyncio.run`` in test bodies.
* ``@pytest.mark.virtual_time`` (``virtual_time(start=s)`` sets the first reading) runs
  the test on :class:`fedloom.testing._clock.VirtualTimeLoop` instead: time-outs end at
  once and read exactly. The bound then holds on both clocks: on the loop's, as a
  ``wait_for`` in the test did (a conversation stuck on timers fails at once), and on the
  wall clock's, so a test that hangs in real time (on a thread or on I/O, where virtual
  time stands still) still fails after the same number of real seconds.
* Every test under ``tests/integration`` gets the ``process`` marker (real processes, real
  servers): ``make test-fast`` leaves them out with ``-m "not process and not slow"``.
* ``shared_hub`` is a real gRPC hub on 127.0.0.1, started once per session in a thread of
  its own (its event loop outlives each test's loop). Tests stay independent by asking
  it for identities of their own (``shared_hub.identities(alice="modeller")``); a test
  that needs special hub settings, a restart or the hub's files starts its own hub.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path

import pytest

from fedloom.testing._clock import run_in_virtual_time
from integration.hub_kit import SharedHub

ASYNC_TEST_TIMEOUT = 60.0
"""Seconds an ``async def`` test may run before it fails (well under pytest's timeout)."""

_INTEGRATION = Path(__file__).parent / "integration"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "async_timeout(seconds): bound on an async def test (default 60 s)"
    )
    config.addinivalue_line(
        "markers",
        "virtual_time(start=0.0): run an async def test on a virtual-time event loop",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an ``async def`` test to completion in a new event loop."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    marker = pyfuncitem.get_closest_marker("async_timeout")
    timeout = float(marker.args[0]) if marker is not None else ASYNC_TEST_TIMEOUT
    names = pyfuncitem._fixtureinfo.argnames
    arguments = {name: pyfuncitem.funcargs[name] for name in names}
    test = asyncio.wait_for(pyfuncitem.obj(**arguments), timeout)
    virtual = pyfuncitem.get_closest_marker("virtual_time")
    if virtual is None:
        asyncio.run(test)
        return True
    start = float(virtual.kwargs.get("start", 0.0))
    run_in_virtual_time(_within_real_seconds(test, timeout), start=start)
    return True


async def _within_real_seconds(test: Coroutine[object, object, object], seconds: float) -> None:
    """Await ``test``, cancelled with :class:`TimeoutError` after ``seconds`` of wall clock.

    A thread watches the wall clock because the loop's own timers keep virtual time.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(test)
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        loop.call_soon_threadsafe(task.cancel)

    watchdog = threading.Timer(seconds, expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        await task
    except asyncio.CancelledError:
        if expired.is_set():
            raise TimeoutError(f"the test ran past {seconds} s of real time") from None
        raise
    finally:
        watchdog.cancel()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(_INTEGRATION):
            item.add_marker(pytest.mark.process)


@pytest.fixture(scope="session")
def shared_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedHub]:
    hub = SharedHub(tmp_path_factory.mktemp("shared-hub"))
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()
