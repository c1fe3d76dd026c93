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
    MAX_FILE_NAME_LENGTH,
    ExperimentStore,
    FailedFile,
    PodStore,
    TaskRunRecord,
    task_hash,
)
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
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for step in range(25):
                task_id = f"w{worker}-{step}"
                store.record_task_run(task_id, "alice", "fedavg", "accepted")
                store.record_task_run(task_id, "alice", "fedavg", "completed", result={"s": step})
                store.task_runs()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expect(not errors, f"concurrent calls failed: {errors[:3]}")
    runs = store.task_runs()
    expect(len(runs) == 150 and all(r.status == "completed" for r in runs), "writes were lost")


_HASH_A = task_hash({"protocol": "inference", "model": "m"}, {"kind": "folder", "path": "/d"})
_HASH_B = task_hash({"protocol": "inference", "model": "m"}, {"kind": "folder", "path": "/e"})


def _fail(name: str, level: str = "file", reason: str = "bad pixels") -> FailedFile:
    return FailedFile(name, reason, "ValueError", level, 12.5)


def _processed_files(store: PodStore) -> None:
    expect(store.processed_files(_HASH_A) == {}, "an unknown task hash has processed files")
    store.record_processed_files(_HASH_A, [("b.png", 20), ("a.png", 10)])
    store.record_processed_files(_HASH_A, ())
    store.record_processed_files(_HASH_B, [("a.png", 99)])
    got = store.processed_files(_HASH_A)
    expect(got == {"a.png": 10, "b.png": 20}, f"processed files read back as {got}")
    expect(all(type(m) is int for m in got.values()), "mtime_ns is not read back as an int")
    got["a.png"] = -1
    expect(store.processed_files(_HASH_A)["a.png"] == 10, "the store shares its dict")
    store.record_processed_files(_HASH_A, [("a.png", 11), ("c.png", 5), ("c.png", 6)])
    got = store.processed_files(_HASH_A)
    expect(got == {"a.png": 11, "b.png": 20, "c.png": 6}, f"upsert read back as {got}")
    expect(store.processed_files(_HASH_B) == {"a.png": 99}, "task hashes are not kept apart")
    name = "é/ü " + "x" * (MAX_FILE_NAME_LENGTH - 4)
    store.record_processed_files(_HASH_B, [(name, 2**63 - 1), ("zero", 0)])
    expect(store.processed_files(_HASH_B)[name] == 2**63 - 1, "a long name or big mtime changed")


def _failed_files(store: PodStore) -> None:
    expect(store.failed_files(_HASH_A) == [], "an unknown task hash has failed files")
    store.record_failed_files(_HASH_A, [_fail("c.png"), _fail("a.png", "batch"), _fail("b.png")])
    store.record_failed_files(_HASH_B, [_fail("a.png")])
    got = store.failed_files(_HASH_A)
    expect([f.name for f in got] == ["a.png", "b.png", "c.png"], f"not sorted by name: {got}")
    expect(got[0] == _fail("a.png", "batch"), f"failure read back as {got[0]}")
    expect(all(type(f.recorded_at) is float for f in got), "recorded_at is not a float")
    store.record_failed_files(_HASH_A, [FailedFile("b.png", "", "", "batch", 13)])
    updated = store.failed_files(_HASH_A)[1]
    expect(updated == FailedFile("b.png", "", "", "batch", 13.0), f"upsert read as {updated}")
    store.record_processed_files(_HASH_A, [("a.png", 1), ("b.png", 2)])
    left = [f.name for f in store.failed_files(_HASH_A)]
    expect(left == ["c.png"], f"processing did not clear failures: {left}")
    expect(len(store.failed_files(_HASH_B)) == 1, "processing cleared another hash's failure")


def _bad_file_records_refused(store: PodStore) -> None:
    store.record_processed_files(_HASH_A, [("kept", 1)])
    store.record_failed_files(_HASH_A, [_fail("broken")])
    store.add_usage("model", 3)
    bad_hashes: list[Any] = [_HASH_A.upper(), _HASH_A[:-1], _HASH_A + "0", "", None, 7, b"00"]
    methods: list[tuple[Callable[..., object], tuple[Any, ...]]] = [
        (store.record_processed_files, ([],)),
        (store.processed_files, ()),
        (store.record_failed_files, ([],)),
        (store.failed_files, ()),
    ]
    for bad_hash in bad_hashes:
        for method, rest in methods:
            with raises(ConfigError, f"{method.__name__}({bad_hash!r})", mentions="task_hash"):
                method(bad_hash, *rest)
    bad_pairs: list[Any] = [
        ("", 1), ("new", -1), ("new", True), ("new", 1.5), ("new", "1"), ("new", None),
        (5, 1), ("x" * (MAX_FILE_NAME_LENGTH + 1), 1), ("nul\x00", 1), ("\udcff", 1),
        ("new", 2**63), ("new",), ("new", 1, 2), "ab", None,
    ]  # fmt: skip
    for pair in bad_pairs:
        files = [("good-1", 1), pair, ("good-2", 2)]
        with raises(ConfigError, f"record_processed_files with {pair!r}"):
            store.record_processed_files(_HASH_A, files)
    not_lists: list[Any] = ["ab", b"ab", None, 5, {"a": 1}]
    for not_a_list in not_lists:
        with raises(ConfigError, f"record_processed_files({not_a_list!r})"):
            store.record_processed_files(_HASH_A, not_a_list)
    bad_failures: list[Any] = [
        _fail("new", "FILE"), _fail("new", "task"), _fail(""), _fail("new", reason=None),  # type: ignore[arg-type]
        FailedFile("new", "r", 5, "file", 1.0),  # type: ignore[arg-type]
        FailedFile("new", "r", "E", "file", float("nan")),
        FailedFile("new", "r", "E", "file", True),
        FailedFile("new", "r", "E", "file", "1"),  # type: ignore[arg-type]
        ("new", "r", "E", "file", 1.0), None,
    ]  # fmt: skip
    for failure in bad_failures:
        with raises(ConfigError, f"record_failed_files with {failure!r}"):
            store.record_failed_files(_HASH_A, [_fail("good"), failure])
    for model, count in [("", 1), (None, 1), (3, 1), ("m", -1), ("m", True), ("m", 1.0),
                         ("m", "2"), ("m", None)]:  # fmt: skip
        with raises(ConfigError, f"add_usage({model!r}, {count!r})"):
            store.add_usage(model, count)  # type: ignore[arg-type]
    for model in ("", None, 3):
        with raises(ConfigError, f"usage({model!r})"):
            store.usage(model)  # type: ignore[arg-type]
    expect(store.processed_files(_HASH_A) == {"kept": 1}, "a refused batch was partly written")
    expect(store.failed_files(_HASH_A) == [_fail("broken")], "a refused failure was written")
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


def _files_and_usage_threads(store: PodStore) -> None:
    errors: list[BaseException] = []
    totals: list[int] = []

    def work(worker: int) -> None:
        try:
            for step in range(25):
                totals.append(store.add_usage("shared", 1))
                store.record_processed_files(_HASH_A, [(f"w{worker}-{step}", step)])
                store.record_failed_files(_HASH_B, [_fail(f"w{worker}-{step}")])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expect(not errors, f"concurrent calls failed: {errors[:3]}")
    expect(sorted(totals) == list(range(1, 151)), "add_usage is not atomic")
    expect(store.usage("shared") == 150, "usage was lost")
    expect(len(store.processed_files(_HASH_A)) == 150, "processed files were lost")
    expect(len(store.failed_files(_HASH_B)) == 150, "failed files were lost")


def _pod_close(store: PodStore) -> None:
    store.record_task_run("t", "alice", "fedavg", "accepted")
    store.close()
    store.close()
    calls: list[tuple[str, Callable[[], object]]] = [
        ("record_task_run", lambda: store.record_task_run("u", "alice", "fedavg", "accepted")),
        ("get_task_run", lambda: store.get_task_run("t")),
        ("task_runs", store.task_runs),
        ("record_processed_files", lambda: store.record_processed_files(_HASH_A, [("a", 1)])),
        ("processed_files", lambda: store.processed_files(_HASH_A)),
        ("record_failed_files", lambda: store.record_failed_files(_HASH_A, [_fail("a")])),
        ("failed_files", lambda: store.failed_files(_HASH_A)),
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
    _processed_files,
    _failed_files,
    _bad_file_records_refused,
    _usage,
    _files_and_usage_threads,
    _pod_close,
]
