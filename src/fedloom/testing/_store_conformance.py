"""Conformance suites for the store contracts, run on every implementation.

``check_experiment_store(factory)`` and ``check_pod_store(factory)`` run every check of one
contract. Each check calls ``factory`` with a fresh temporary folder, uses the store it
returns, then closes it; a broken rule raises AssertionError naming the check::

    def test_my_store_conforms() -> None:
        check_experiment_store(lambda folder: MyStore(folder / "store.db"))
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedloom.errors import ConfigError, NotFoundError, StoreError
from fedloom.store import (
    ExperimentStore,
    PodStore,
    TaskRunRecord,
)
from fedloom.testing._ledger_conformance import LEDGER_CHECKS
from fedloom.testing._store_check_kit import expect_concurrent_calls_succeed
from fedloom.testing._store_experiment_checks import (
    BAD_JSON,
    EXPERIMENT_CHECKS,
    expect,
    raises,
    run_check,
)

__all__ = ["check_experiment_store", "check_pod_store"]


def check_experiment_store(factory: Callable[[Path], ExperimentStore]) -> None:
    """Run every ExperimentStore contract check; AssertionError names the first that fails."""
    for check in EXPERIMENT_CHECKS:
        run_check(check, factory)


def check_pod_store(factory: Callable[[Path], PodStore]) -> None:
    """Run every PodStore contract check; AssertionError names the first that fails."""
    for check in POD_CHECKS:
        run_check(check, factory)


def _is_pod_store(store: PodStore) -> None:
    expect(isinstance(store, PodStore), "does not implement the PodStore methods")


def _record_and_update(store: PodStore) -> None:
    store.record_task_run("task-1", "alice", "fedavg", "accepted")
    run = store.get_task_run("task-1")
    expected = TaskRunRecord("task-1", "alice", "fedavg", "accepted", None, None, 0.0, None)
    expect(run == TaskRunRecord(**{**vars(expected), "started_at": run.started_at}), f"{run}")
    expect(isinstance(run.started_at, float), "started_at is not a float")
    result = {"metrics": {"loss": 0.1}, "files": ["a.csv"]}
    store.record_task_run("task-1", "alice", "fedavg", "completed", result=result)
    done = store.get_task_run("task-1")
    expect(done.status == "completed" and done.result == result, f"update read back as {done}")
    expect(done.started_at == run.started_at, "an update changed started_at")
    expect(done.finished_at is not None and done.finished_at >= done.started_at, "finished_at")
    store.record_task_run("task-1", "alice", "fedavg", "aborted", "WORKER_ERROR")
    aborted = store.get_task_run("task-1")
    expect((aborted.reason, aborted.result) == ("WORKER_ERROR", None), "update keeps old fields")
    store.record_task_run("task-2", "bob", "analytics", "rejected", reason="NO_ACCESS")
    rejected = store.get_task_run("task-2")
    expect(rejected.status == "rejected" and rejected.reason == "NO_ACCESS", f"{rejected}")
    expect(rejected.finished_at is not None, "a rejected run has no finished_at")


def _order_and_listing(store: PodStore) -> None:
    for task_id in ("c", "a", "b"):
        store.record_task_run(task_id, "alice", "fedavg", "accepted")
    store.record_task_run("c", "alice", "fedavg", "completed", result={"n": 1})
    runs = store.task_runs()
    expect([r.task_id for r in runs] == ["c", "a", "b"], "not ordered by started_at")
    expect(runs == [store.get_task_run(r.task_id) for r in runs], "listing differs from get")
    starts = [r.started_at for r in runs]
    expect(starts == sorted(starts), "started_at is not in order")


def _bad_runs_refused(store: PodStore) -> None:
    store.record_task_run("kept", "alice", "fedavg", "accepted")
    before = store.task_runs()
    bad: list[tuple[tuple[Any, ...], dict[str, Any], str]] = [
        (("new", "alice", "fedavg", "done"), {}, ""),
        (("new", "alice", "fedavg", "ACCEPTED"), {}, ""),
        (("new", "alice", "fedavg", None), {}, ""),
        (("", "alice", "fedavg", "accepted"), {}, ""),
        ((123, "alice", "fedavg", "accepted"), {}, ""),
        (("new", "", "fedavg", "accepted"), {}, ""),
        (("new", "alice", None, "accepted"), {}, ""),
        (("new", "alice", "fedavg", "rejected"), {"reason": 5}, ""),
        (("kept", "alice", "fedavg", "completed"), {"result": [1, 2]}, ""),
        *[(("kept", "alice", "fedavg", "completed"), {"result": r}, k) for r, k in BAD_JSON],
    ]
    for args, kwargs, key in bad:
        with raises(ConfigError, f"record_task_run{args!r} {kwargs!r}", mentions=key):
            store.record_task_run(*args, **kwargs)
    with raises(StoreError, "reuse a task id for another modeller", unless=NotFoundError):
        store.record_task_run("kept", "mallory", "fedavg", "completed")
    with raises(StoreError, "reuse a task id for another protocol", unless=NotFoundError):
        store.record_task_run("kept", "alice", "analytics", "completed")
    expect(store.task_runs() == before, "a refused run was written")
    for unknown in ("missing", "", None):
        with raises(NotFoundError, f"get_task_run({unknown!r})"):
            store.get_task_run(unknown)  # type: ignore[arg-type]


def _runs_are_copies(store: PodStore) -> None:
    result: dict[str, Any] = {"metrics": {"loss": [0.5]}}
    store.record_task_run("t", "alice", "fedavg", "completed", result=result)
    result["metrics"]["loss"].append(9.0)
    for run in (store.get_task_run("t"), store.task_runs()[0]):
        expect(run.result == {"metrics": {"loss": [0.5]}}, "store shares the caller's result")
        assert run.result is not None
        run.result["metrics"].clear()
    expect(store.get_task_run("t").result == {"metrics": {"loss": [0.5]}}, "result is shared")


def _pod_statistics(store: PodStore) -> None:
    statistics = getattr(store, "statistics", None)
    if statistics is None:
        return
    expect(statistics().task_runs == 0, "a new store is not empty")
    for task_id, status in [("a", "accepted"), ("b", "rejected"), ("c", "completed")]:
        store.record_task_run(task_id, "alice", "fedavg", status)
    store.record_task_run("a", "alice", "fedavg", "aborted")
    counts = statistics()
    got = (counts.task_runs, counts.accepted, counts.rejected, counts.completed, counts.aborted)
    expect(got == (3, 0, 1, 1, 1), f"statistics are {counts}")


def _pod_threads(store: PodStore) -> None:
    def work(worker: int) -> None:
        for step in range(25):
            task_id = f"w{worker}-{step}"
            store.record_task_run(task_id, "alice", "fedavg", "accepted")
            store.record_task_run(task_id, "alice", "fedavg", "completed", result={"s": step})
            store.task_runs()

    expect_concurrent_calls_succeed(work)
    runs = store.task_runs()
    expect(len(runs) == 150 and all(r.status == "completed" for r in runs), "writes were lost")


def _bad_usage_refused(store: PodStore) -> None:
    store.add_usage("model", 3)
    for model, count in [("", 1), (None, 1), (3, 1), ("m", -1), ("m", True), ("m", 1.0),
                         ("m", "2"), ("m", None)]:  # fmt: skip
        with raises(ConfigError, f"add_usage({model!r}, {count!r})"):
            store.add_usage(model, count)  # type: ignore[arg-type]
    for model in ("", None, 3):
        with raises(ConfigError, f"usage({model!r})"):
            store.usage(model)  # type: ignore[arg-type]
    expect((store.usage("model"), store.usage("m")) == (3, 0), "refused usage was counted")


def _usage(store: PodStore) -> None:
    expect(store.usage("resnet") == 0, "a model never used has usage")
    expect(store.add_usage("resnet", 3) == 3, "add_usage does not return the new total")
    expect(store.add_usage("resnet", 0) == 3, "adding 0 changed the total")
    expect(store.add_usage("resnet", 4) == 7, "add_usage does not add")
    expect(store.add_usage("bert", 1) == 1, "models share their usage")
    expect((store.usage("resnet"), store.usage("bert")) == (7, 1), "usage reads back wrong")
    expect(store.add_usage("big", 2**63 - 1) == 2**63 - 1, "the largest total is refused")
    with raises(ConfigError, "add_usage past 2**63 - 1", mentions="big"):
        store.add_usage("big", 1)
    expect(store.usage("big") == 2**63 - 1, "an overflowing add changed the total")


def _usage_threads(store: PodStore) -> None:
    errors: list[BaseException] = []
    totals: list[int] = []

    def work() -> None:
        try:
            for _ in range(25):
                totals.append(store.add_usage("shared", 1))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expect(not errors, f"concurrent calls failed: {errors[:3]}")
    expect(sorted(totals) == list(range(1, 151)), "add_usage is not atomic")
    expect(store.usage("shared") == 150, "usage was lost")


def _pod_close(store: PodStore) -> None:
    store.record_task_run("t", "alice", "fedavg", "accepted")
    store.close()
    store.close()
    calls: list[tuple[str, Callable[[], object]]] = [
        ("record_task_run", lambda: store.record_task_run("u", "alice", "fedavg", "accepted")),
        ("get_task_run", lambda: store.get_task_run("t")),
        ("task_runs", store.task_runs),
        ("add_usage", lambda: store.add_usage("m", 1)),
        ("usage", lambda: store.usage("m")),
    ]
    for name, call in calls:
        with raises(StoreError, f"{name} on a closed store", unless=NotFoundError):
            call()


POD_CHECKS: list[Callable[[PodStore], None]] = [
    _is_pod_store,
    _record_and_update,
    _order_and_listing,
    _bad_runs_refused,
    _runs_are_copies,
    _pod_statistics,
    _pod_threads,
    *LEDGER_CHECKS,
    _bad_usage_refused,
    _usage,
    _usage_threads,
    _pod_close,
]
