"""fedloom.store: the conformance suites on every implementation, plus SQLite specifics."""

from __future__ import annotations

import hashlib
import itertools
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

import fedloom.store as store_module
from fedloom.errors import ConfigError, SchemaVersionError, StoreError
from fedloom.store import (
    SCHEMA_VERSION,
    ExperimentStore,
    MemoryExperimentStore,
    MemoryPodStore,
    PodStore,
    SqliteExperimentStore,
    SqlitePodStore,
)
from fedloom.store._schema import APPLICATION_ID, MIGRATIONS
from fedloom.testing._store_conformance import check_experiment_store, check_pod_store

EXPERIMENT_FACTORIES: dict[str, Callable[[Path], ExperimentStore]] = {
    "memory": lambda folder: MemoryExperimentStore(),
    "sqlite": lambda folder: SqliteExperimentStore(folder / "modeller.db"),
}
POD_FACTORIES: dict[str, Callable[[Path], PodStore]] = {
    "memory": lambda folder: MemoryPodStore(),
    "sqlite": lambda folder: SqlitePodStore(folder / "pod.db"),
}


@pytest.mark.parametrize("kind", sorted(EXPERIMENT_FACTORIES))
def test_experiment_store_conformance(kind: str) -> None:
    check_experiment_store(EXPERIMENT_FACTORIES[kind])


@pytest.mark.parametrize("kind", sorted(POD_FACTORIES))
def test_pod_store_conformance(kind: str) -> None:
    check_pod_store(POD_FACTORIES[kind])


def test_conformance_suite_catches_a_broken_store() -> None:
    class ReversedListing(MemoryExperimentStore):
        def list_experiments(self) -> list[store_module.ExperimentRecord]:
            return super().list_experiments()[::-1]

    with pytest.raises(AssertionError, match=r"list_experiments.*creation order"):
        check_experiment_store(lambda folder: ReversedListing())


def test_public_names_are_sorted_and_importable() -> None:
    assert store_module.__all__ == sorted(store_module.__all__)
    for name in store_module.__all__:
        assert getattr(store_module, name) is not None


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_task_runs_follow_the_clock_not_insertion(kind: str, tmp_path: Path) -> None:
    ticks = iter([30.0, 10.0, 20.0, 40.0])
    clock: Callable[[], float] = lambda: next(ticks)  # noqa: E731
    pod: PodStore = (
        MemoryPodStore(clock=clock)
        if kind == "memory"
        else SqlitePodStore(tmp_path / "p.db", clock=clock)
    )
    for task_id in ("late", "early", "middle"):
        pod.record_task_run(task_id, "alice", "fedavg", "accepted")
    pod.record_task_run("early", "alice", "fedavg", "completed")
    runs = pod.task_runs()
    assert [(r.task_id, r.started_at) for r in runs] == [
        ("early", 10.0),
        ("middle", 20.0),
        ("late", 30.0),
    ]
    assert runs[0].finished_at == 40.0
    pod.close()


# --- SQLite specifics ----------------------------------------------------------------------


@pytest.fixture
def modeller_db(tmp_path: Path) -> Path:
    return tmp_path / "workspace" / "modeller.db"


@pytest.fixture
def store(modeller_db: Path) -> Iterator[SqliteExperimentStore]:
    with SqliteExperimentStore(modeller_db) as opened:
        yield opened


def _fill(store: SqliteExperimentStore) -> str:
    experiment_id = store.create_experiment("mnist", {"lr": 0.1, "rounds": 3})
    store.record_round(experiment_id, 0, {"loss": 0.5}, {"pod-a": {"loss": 0.4}})
    store.record_round(experiment_id, 1, {"loss": 0.25}, {"pod-a": {"loss": 0.2}})
    store.save_checkpoint(experiment_id, 1, {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    return experiment_id


def _raw(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def test_reopened_store_shows_everything_written(modeller_db: Path) -> None:
    with SqliteExperimentStore(modeller_db) as first:
        experiment_id = _fill(first)
        done = first.create_experiment("done", {})
        first.finish_experiment(done, "completed", {"accuracy": 0.93})
        before = first.list_experiments()
    with SqliteExperimentStore(modeller_db) as second:
        assert second.list_experiments() == before
        loaded = second.load_checkpoint(experiment_id)
        np.testing.assert_array_equal(loaded["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
        second.record_round(experiment_id, 2, {"loss": 0.1}, {})  # resume after a restart
        assert second.statistics() == store_module.ExperimentStoreStatistics(2, 1, 3, 1)


def test_reopened_pod_store_shows_every_task_run(tmp_path: Path) -> None:
    with SqlitePodStore(tmp_path / "pod.db") as first:
        first.record_task_run("t1", "alice", "fedavg", "accepted")
        first.record_task_run("t1", "alice", "fedavg", "completed", result={"n": 10})
        first.record_task_run("t2", "bob", "analytics", "rejected", "NO_ACCESS")
        before = first.task_runs()
    with SqlitePodStore(tmp_path / "pod.db") as second:
        assert second.task_runs() == before
        assert second.get_task_run("t1").result == {"n": 10}


def test_new_store_is_versioned_wal_and_enforces_foreign_keys(
    store: SqliteExperimentStore, modeller_db: Path
) -> None:
    assert SCHEMA_VERSION == len(MIGRATIONS) >= 1
    raw = _raw(modeller_db)
    try:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()
    conn = store._db._conn  # the store's own connection
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO rounds VALUES (?, ?, ?, ?, ?)", ("no-such-experiment", 0, "{}", "{}", 0.0)
        )


def test_newer_schema_version_is_refused_without_touching_the_file(modeller_db: Path) -> None:
    SqliteExperimentStore(modeller_db).close()
    raw = _raw(modeller_db)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 4}")
    raw.close()
    before = modeller_db.read_bytes()
    with pytest.raises(SchemaVersionError) as caught:
        SqliteExperimentStore(modeller_db)
    assert str(SCHEMA_VERSION + 4) in str(caught.value)
    assert str(SCHEMA_VERSION) in str(caught.value)
    assert modeller_db.read_bytes() == before
    with pytest.raises(SchemaVersionError):
        SqlitePodStore(modeller_db)


@pytest.mark.parametrize(
    "content",
    [os.urandom(4096), b"hello, not a database\n" * 50, b"SQLite format 3\x00" + bytes(84)],
)
def test_a_file_that_is_not_sqlite_is_a_store_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.db"
    path.write_bytes(content)
    for opener in (SqliteExperimentStore, SqlitePodStore):
        with pytest.raises(StoreError) as caught:
            opener(path)
        assert not isinstance(caught.value, sqlite3.Error)
        assert isinstance(caught.value.__cause__, sqlite3.Error)
    assert path.read_bytes() == content


def test_another_programs_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    raw = _raw(path)
    raw.execute("CREATE TABLE notes (body TEXT)")
    raw.close()
    with pytest.raises(StoreError, match="did not create"):
        SqliteExperimentStore(path)


@pytest.mark.parametrize("path", [":memory:", ""])
def test_a_path_that_names_no_file_is_a_config_error(path: str) -> None:
    with pytest.raises(ConfigError):
        SqliteExperimentStore(path)


def test_modeller_and_pod_stores_can_share_one_file(tmp_path: Path) -> None:
    with (
        SqliteExperimentStore(tmp_path / "x.db") as experiments,
        SqlitePodStore(tmp_path / "x.db") as pod,
    ):
        experiments.create_experiment("e", {})
        pod.record_task_run("t", "alice", "fedavg", "accepted")
        assert len(experiments.list_experiments()) == 1 and len(pod.task_runs()) == 1


def test_failed_writes_leave_the_file_byte_for_byte_unchanged(modeller_db: Path) -> None:
    with SqliteExperimentStore(modeller_db) as first:
        experiment_id = _fill(first)
        before_records = first.list_experiments()
    before = modeller_db.read_bytes()
    with SqliteExperimentStore(modeller_db) as second:
        failures: list[tuple[type[Exception], Callable[[], object]]] = [
            (
                ConfigError,
                lambda: second.record_round(experiment_id, 5, {"loss": float("nan")}, {}),
            ),
            (StoreError, lambda: second.record_round(experiment_id, 0, {"loss": 1.0}, {})),
            (StoreError, lambda: second.save_checkpoint(experiment_id, 1, {"w": np.zeros(2)})),
            (ConfigError, lambda: second.save_checkpoint(experiment_id, 2, {"w": np.array(["x"])})),
            (ConfigError, lambda: second.create_experiment("bad", {"s": {1, 2}})),
            (ConfigError, lambda: second.finish_experiment(experiment_id, "done", {})),
        ]
        for error, call in failures:
            with pytest.raises(error):
                call()
        assert second.list_experiments() == before_records
    assert modeller_db.read_bytes() == before
    raw = _raw(modeller_db)
    assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    raw.close()


def test_checkpoint_files_are_safetensors_at_the_documented_path(
    store: SqliteExperimentStore, modeller_db: Path
) -> None:
    experiment_id = store.create_experiment("e", {})
    arrays = {"layer.weight": np.ones((2, 2), dtype=np.float32), "step": np.array(3)}
    ref = store.save_checkpoint(experiment_id, 7, arrays)
    expected = modeller_db.parent / "checkpoints" / experiment_id / "round-00007.safetensors"
    assert Path(ref.path) == expected
    assert hashlib.sha256(expected.read_bytes()).hexdigest() == ref.sha256
    loaded = safetensors.numpy.load_file(expected)
    assert sorted(loaded) == sorted(arrays)
    assert os.listdir(expected.parent) == [expected.name]  # no temporary file left behind


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_tamper, "modified or corrupted"),
        (lambda path: path.write_bytes(path.read_bytes()[:-4]), "modified or corrupted"),
        (lambda path: path.unlink(), "missing"),
    ],
)
def test_damaged_checkpoint_is_detected(
    store: SqliteExperimentStore, damage: Callable[[Path], Any], message: str
) -> None:
    experiment_id = _fill(store)
    ref = store.get_experiment(experiment_id).checkpoints[0]
    damage(Path(ref.path))
    with pytest.raises(StoreError, match=message):
        store.load_checkpoint(experiment_id, 1)


def test_memory_checkpoints_name_memory_paths() -> None:
    with MemoryExperimentStore() as memory:
        experiment_id = memory.create_experiment("e", {})
        ref = memory.save_checkpoint(experiment_id, 2, {"w": np.zeros(3)})
        assert ref.path.startswith("memory:")
        sqlite_like = hashlib.sha256(safetensors.numpy.save({"w": np.zeros(3)})).hexdigest()
        assert ref.sha256 == sqlite_like


def test_many_reopens_keep_one_consistent_history(tmp_path: Path) -> None:
    path = tmp_path / "pod.db"
    counter = itertools.count()
    for _ in range(5):
        with SqlitePodStore(path) as pod:
            for _ in range(3):
                pod.record_task_run(f"t{next(counter)}", "alice", "fedavg", "completed")
    with SqlitePodStore(path) as pod:
        assert [r.task_id for r in pod.task_runs()] == [f"t{i}" for i in range(15)]
