"""Conformance suite for the processed-files ledger of the pod stores.

The ledger is the pod store's record of the files each kind of task processed or failed
on; run-on-new-data-only and resilience read it.

``check_ledger(factory)`` calls ``factory`` with a fresh temporary folder for each check,
uses the store it returns, then closes it; a broken rule raises AssertionError naming the
check. :func:`~fedloom.testing.check_pod_store` runs these checks too::

    def test_my_store_keeps_its_ledger() -> None:
        check_ledger(lambda folder: MyPodStore(folder / "pod.db"))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from fedloom.errors import ConfigError, NotFoundError, StoreError
from fedloom.store import MAX_FILE_NAME_LENGTH, FailedFile, task_hash
from fedloom.testing._store_check_kit import (
    expect,
    expect_concurrent_calls_succeed,
    raises,
    run_check,
)

__all__ = ["FileLedger", "LEDGER_CHECKS", "check_ledger"]


class FileLedger(Protocol):
    """The part of :class:`~fedloom.store.PodStore` this suite checks."""

    def record_processed_files(self, task_hash: str, files: Sequence[tuple[str, int]]) -> None:
        """Record ``(name, mtime_ns)`` pairs as processed (clearing their failures)."""

    def processed_files(self, task_hash: str) -> dict[str, int]:
        """``{name: mtime_ns}`` of every file processed under ``task_hash``."""
        ...

    def record_failed_files(self, task_hash: str, failures: Sequence[FailedFile]) -> None:
        """Record (or replace) failures by file name."""

    def failed_files(self, task_hash: str) -> list[FailedFile]:
        """The failures under ``task_hash``, sorted by name."""
        ...

    def close(self) -> None:
        """Release the store; later calls raise StoreError."""


def check_ledger(factory: Callable[[Path], FileLedger]) -> None:
    """Run every processed-files ledger check, each on a fresh store from ``factory``.

    Raises:
        AssertionError: naming the first check that failed.
    """
    for check in LEDGER_CHECKS:
        run_check(check, factory)


_HASH_A = task_hash({"protocol": "inference", "model": "m"}, {"kind": "folder", "path": "/d"})
_HASH_B = task_hash({"protocol": "inference", "model": "m"}, {"kind": "folder", "path": "/e"})


def _fail(name: str, level: str = "file", reason: str = "bad pixels") -> FailedFile:
    return FailedFile(name, reason, "ValueError", level, 12.5)


def _processed_files(store: FileLedger) -> None:
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


def _failed_files(store: FileLedger) -> None:
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


def _bad_file_records_refused(store: FileLedger) -> None:
    store.record_processed_files(_HASH_A, [("kept", 1)])
    store.record_failed_files(_HASH_A, [_fail("broken")])
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
    expect(store.processed_files(_HASH_A) == {"kept": 1}, "a refused batch was partly written")
    expect(store.failed_files(_HASH_A) == [_fail("broken")], "a refused failure was written")


def _threads(store: FileLedger) -> None:
    def work(worker: int) -> None:
        for step in range(25):
            store.record_processed_files(_HASH_A, [(f"w{worker}-{step}", step)])
            store.record_failed_files(_HASH_B, [_fail(f"w{worker}-{step}")])

    expect_concurrent_calls_succeed(work)
    expect(len(store.processed_files(_HASH_A)) == 150, "processed files were lost")
    expect(len(store.failed_files(_HASH_B)) == 150, "failed files were lost")


def _closed(store: FileLedger) -> None:
    store.record_processed_files(_HASH_A, [("a", 1)])
    store.close()
    store.close()
    calls: list[tuple[str, Callable[[], object]]] = [
        ("record_processed_files", lambda: store.record_processed_files(_HASH_A, [("a", 1)])),
        ("processed_files", lambda: store.processed_files(_HASH_A)),
        ("record_failed_files", lambda: store.record_failed_files(_HASH_A, [_fail("a")])),
        ("failed_files", lambda: store.failed_files(_HASH_A)),
    ]
    for name, call in calls:
        with raises(StoreError, f"{name} on a closed store", unless=NotFoundError):
            call()


LEDGER_CHECKS: list[Callable[[Any], None]] = [
    _processed_files,
    _failed_files,
    _bad_file_records_refused,
    _threads,
    _closed,
]
