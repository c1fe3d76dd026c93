"""Every simulation backend passes the Backend conformance suite."""

from __future__ import annotations

from fedloom.simulation import ProcessPoolBackend, ThreadPoolBackend
from fedloom.testing import check_backend


def test_the_process_pool_conforms() -> None:
    check_backend(ProcessPoolBackend)


def test_the_process_pool_with_one_slot_per_worker_conforms() -> None:
    check_backend(lambda: ProcessPoolBackend(slots_per_worker=1))


def test_the_thread_pool_conforms() -> None:
    check_backend(ThreadPoolBackend)
