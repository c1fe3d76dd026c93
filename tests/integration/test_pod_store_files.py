"""Pod store: task hashes, processed and failed files, per-model usage, schema v1 -> v2."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from fedloom.errors import ConfigError
from fedloom.store import (
    SCHEMA_VERSION,
    FailedFile,
    MemoryPodStore,
    SqlitePodStore,
    task_hash,
)
from fedloom.store._schema import APPLICATION_ID, MIGRATIONS
from fedloom.testing._store_conformance import check_pod_store

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL is POSIX only")

TASK = {"protocol": "inference", "model": {"name": "resnet", "version": 3}}
DATASOURCE = {"kind": "folder", "path": "/data/scans", "pattern": "*.png"}
HASH = task_hash(TASK, DATASOURCE)


# --- task_hash -----------------------------------------------------------------------------


def test_task_hash_is_sha256_of_the_canonical_json() -> None:
    text = (
        '{"datasource":{"kind":"folder","path":"/data/scans","pattern":"*.png"},'
        '"task":{"model":{"name":"resnet","version":3},"protocol":"inference"}}'
    )
    assert hashlib.sha256(text.encode()).hexdigest() == HASH
    accented = task_hash({"name": "é✓"}, {})
    expected = '{"datasource":{},"task":{"name":"é✓"}}'.encode()
    assert accented == hashlib.sha256(expected).hexdigest()


def test_task_hash_ignores_key_order_but_not_values() -> None:
    reordered_task = {"model": {"version": 3, "name": "resnet"}, "protocol": "inference"}
    reordered_source = dict(reversed(list(DATASOURCE.items())))
    assert task_hash(reordered_task, reordered_source) == HASH
    assert task_hash(TASK, {**DATASOURCE, "path": "/data/other"}) != HASH
    assert task_hash(DATASOURCE, TASK) != HASH  # task and datasource are not interchangeable
    assert task_hash({"n": 1}, {}) != task_hash({"n": 1.0}, {})
    assert len(HASH) == 64 and HASH.lower() == HASH


@pytest.mark.parametrize(
    ("task", "datasource", "mentions"),
    [
        ({"columns": {"a"}}, {}, "'columns'"),
        ({"lr": float("nan")}, {}, "'lr'"),
        ({}, {"raw": b"x"}, "'raw'"),
        ({}, {1: "one"}, "1"),
        ({"name": "\udcff"}, {}, "Unicode"),
        ([("a", 1)], {}, "mapping"),
        ({}, None, "mapping"),
    ],
)
def test_task_hash_refuses_what_json_cannot_hold(task: Any, datasource: Any, mentions: str) -> None:
    with pytest.raises(ConfigError, match=mentions):
        task_hash(task, datasource)


# --- the conformance suite catches broken stores ------------------------------------------


def test_conformance_catches_a_store_that_keeps_failures_of_processed_files() -> None:
    class KeepsFailures(MemoryPodStore):
        def record_processed_files(self, task_hash: str, files: Sequence[tuple[str, int]]) -> None:
            failed = self.failed_files(task_hash)
            super().record_processed_files(task_hash, files)
            self.record_failed_files(task_hash, failed)

    with pytest.raises(AssertionError, match="did not clear failures"):
        check_pod_store(lambda folder: KeepsFailures())


def test_conformance_catches_a_store_that_writes_half_a_batch() -> None:
    class HalfBatches(MemoryPodStore):
        def record_processed_files(self, task_hash: str, files: Sequence[tuple[str, int]]) -> None:
            if not isinstance(files, list):
                super().record_processed_files(task_hash, files)
                return
            super().record_processed_files(task_hash, [])  # still refuses bad hashes
            for entry in files:  # but writes the good entries before a bad one
                super().record_processed_files(task_hash, [entry])

    with pytest.raises(AssertionError, match="partly written"):
        check_pod_store(lambda folder: HalfBatches())


# --- SQLite: persistence, migration, crashes ----------------------------------------------


def test_files_and_usage_survive_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "pod.db"
    failure = FailedFile("c.png", "cannot decode", "OSError", "batch", 5.0)
    with SqlitePodStore(path, clock=lambda: 100.0) as first:
        first.record_processed_files(HASH, [("a.png", 1_700_000_000_123_456_789), ("b.png", 0)])
        first.record_failed_files(HASH, [failure])
        first.add_usage("resnet", 64)
    with SqlitePodStore(path) as second:
        assert second.processed_files(HASH) == {"a.png": 1_700_000_000_123_456_789, "b.png": 0}
        assert second.failed_files(HASH) == [failure]
        assert second.usage("resnet") == 64
        assert second.add_usage("resnet", 36) == 100
    with SqlitePodStore(path) as third:
        assert third.usage("resnet") == 100


def _write_v1_store(path: Path) -> None:
    """A pod store as the first schema version left it: only MIGRATIONS[0], one task run."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            for statement in MIGRATIONS[0]:
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute("PRAGMA user_version = 1")
        conn.execute(
            "INSERT INTO task_runs (task_id, modeller, protocol, status, reason, result_json,"
            " started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            ("old-task", "alice", "fedavg", "completed", None, '{"n":3}', 10.0, 11.0),
        )
    finally:
        conn.close()


def test_a_version_1_store_migrates_in_place_and_keeps_its_task_runs(tmp_path: Path) -> None:
    path = tmp_path / "pod.db"
    _write_v1_store(path)
    with SqlitePodStore(path) as pod:
        run = pod.get_task_run("old-task")
        assert (run.status, run.result, run.started_at, run.finished_at) == (
            "completed",
            {"n": 3},
            10.0,
            11.0,
        )
        pod.record_processed_files(HASH, [("a.png", 7)])
        pod.record_failed_files(HASH, [FailedFile("b.png", "r", "E", "file", 1.0)])
        assert pod.add_usage("resnet", 2) == 2
        pod.record_task_run("new-task", "alice", "fedavg", "accepted")
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
        tables = {row[0] for row in raw.execute("SELECT name FROM sqlite_master")}
        assert {"task_runs", "processed_files", "failed_files", "model_usage"} <= tables
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        raw.close()
    with SqlitePodStore(path) as reopened:
        assert [r.task_id for r in reopened.task_runs()] == ["old-task", "new-task"]
        assert reopened.processed_files(HASH) == {"a.png": 7}


def test_the_sql_constraints_back_the_python_checks(tmp_path: Path) -> None:
    with SqlitePodStore(tmp_path / "pod.db") as pod:
        conn = pod._db._conn  # the store's own connection
        for statement, params in [
            ("INSERT INTO processed_files VALUES (?, ?, ?, ?)", (HASH, "a", -1, 0.0)),
            ("INSERT INTO processed_files VALUES (?, ?, ?, ?)", ("short", "a", 1, 0.0)),
            ("INSERT INTO failed_files VALUES (?, ?, ?, ?, ?, ?)", (HASH, "a", "", "", "x", 0.0)),
            ("INSERT INTO model_usage VALUES (?, ?)", ("m", -5)),
        ]:
            with pytest.raises(sqlite3.IntegrityError):
                conn.execute(statement, params)


_KILLED_AFTER_RECORDING = textwrap.dedent(
    """
    import os, signal, sys
    from fedloom.store import FailedFile, SqlitePodStore
    store = SqlitePodStore(sys.argv[1])
    store.record_processed_files(sys.argv[2], [(f"f{i:04d}.png", i) for i in range(500)])
    store.record_failed_files(sys.argv[2], [FailedFile("bad.png", "r", "E", "file", 1.0)])
    store.add_usage("resnet", 500)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


@posix_only
def test_recorded_files_and_usage_survive_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "pod.db"
    child = subprocess.run(
        [sys.executable, "-c", _KILLED_AFTER_RECORDING, str(path), HASH],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    with SqlitePodStore(path) as pod:
        assert pod.processed_files(HASH) == {f"f{i:04d}.png": i for i in range(500)}
        assert [f.name for f in pod.failed_files(HASH)] == ["bad.png"]
        assert pod.usage("resnet") == 500
    assert _row_counts(path) == (500, 500)


def _row_counts(path: Path) -> tuple[int, int]:
    raw = sqlite3.connect(path)
    try:
        row = raw.execute("SELECT count(*), count(DISTINCT name) FROM processed_files").fetchone()
        return int(row[0]), int(row[1])
    finally:
        raw.close()


BATCH = 20
_KILLED_MID_TASK = textwrap.dedent(
    """
    import sys
    from fedloom.store import SqlitePodStore
    store = SqlitePodStore(sys.argv[1])
    for batch in range(100_000):
        files = [(f"b{batch:06d}-{i:02d}.png", batch) for i in range(int(sys.argv[3]))]
        store.record_processed_files(sys.argv[2], files)
        print(batch, flush=True)
    """
)


@posix_only
def test_a_pod_killed_mid_task_loses_and_doubles_no_processed_file(tmp_path: Path) -> None:
    path = tmp_path / "pod.db"
    SqlitePodStore(path).close()  # migrate first, so the child is killed while recording
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_MID_TASK, str(path), HASH, str(BATCH)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        reported = [int(child.stdout.readline()) for _ in range(30)]
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(timeout=60)
        if child.stdout is not None:
            child.stdout.close()
        if child.stderr is not None:
            child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    with SqlitePodStore(path) as pod:
        processed = pod.processed_files(HASH)
        batches = sorted({mtime for mtime in processed.values()})
        # All or nothing per call: every batch that is there is whole, and they form a prefix.
        assert batches == list(range(len(batches)))
        assert len(processed) == BATCH * len(batches)
        assert set(reported) <= set(batches)
        # The restarted pod processes what is new or modified, then counts no file twice.
        total_batches = len(batches) + 5
        wanted = {
            f"b{batch:06d}-{i:02d}.png": batch
            for batch in range(total_batches)
            for i in range(BATCH)
        }
        todo = [(name, m) for name, m in wanted.items() if processed.get(name) != m]
        assert len(todo) == 5 * BATCH
        pod.record_processed_files(HASH, todo)
        assert pod.processed_files(HASH) == wanted
    assert _row_counts(path) == (len(wanted), len(wanted))
