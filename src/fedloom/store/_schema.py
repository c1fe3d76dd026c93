"""The SQLite schema of fedloom stores, its ordered migrations, and the shared connection.

The schema version lives in ``PRAGMA user_version``: version N means the first N entries
of :data:`MIGRATIONS` have been applied. To change the schema, append a migration (never
edit one that has shipped); each runs in one transaction together with the version bump.
``PRAGMA application_id`` marks a file as a fedloom store, so that fedloom never adds its
tables to another program's database.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from fedloom.errors import ConfigError, FedloomError, SchemaVersionError, StoreError

logger = logging.getLogger(__name__)

#: Seconds a write waits for another process's write lock before failing.
DEFAULT_BUSY_TIMEOUT_S = 5.0

#: ``PRAGMA application_id`` of every fedloom store ("FLOM" in ASCII).
APPLICATION_ID = 0x464C4F4D

_V1_INITIAL = (
    """
    CREATE TABLE experiments (
        experiment_id TEXT PRIMARY KEY NOT NULL,
        name          TEXT NOT NULL,
        task_json     TEXT NOT NULL,
        status        TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed')),
        created_at    REAL NOT NULL,
        finished_at   REAL,
        result_json   TEXT
    )
    """,
    """
    CREATE TABLE rounds (
        experiment_id   TEXT NOT NULL REFERENCES experiments (experiment_id) ON DELETE CASCADE,
        round_index     INTEGER NOT NULL CHECK (round_index >= 0),
        aggregated_json TEXT NOT NULL,
        per_pod_json    TEXT NOT NULL,
        recorded_at     REAL NOT NULL,
        PRIMARY KEY (experiment_id, round_index)
    )
    """,
    """
    CREATE TABLE checkpoints (
        experiment_id TEXT NOT NULL REFERENCES experiments (experiment_id) ON DELETE CASCADE,
        round_index   INTEGER NOT NULL CHECK (round_index >= 0),
        relpath       TEXT NOT NULL,
        sha256        TEXT NOT NULL,
        created_at    REAL NOT NULL,
        PRIMARY KEY (experiment_id, round_index)
    )
    """,
    """
    CREATE TABLE task_runs (
        task_id     TEXT PRIMARY KEY NOT NULL,
        modeller    TEXT NOT NULL,
        protocol    TEXT NOT NULL,
        status      TEXT NOT NULL
                    CHECK (status IN ('accepted', 'rejected', 'completed', 'aborted')),
        reason      TEXT,
        result_json TEXT,
        started_at  REAL NOT NULL,
        finished_at REAL
    )
    """,
    "CREATE INDEX task_runs_by_start ON task_runs (started_at)",
)

# Version 2: what a pod needs for batched streaming runs (run on new data only, resilience
# re-runs, inference limits per model). Keyed by task hash, not task id: a task run again
# with the same definition and datasource gets a new id but must see the same files.
_V2_POD_FILES_AND_USAGE = (
    """
    CREATE TABLE processed_files (
        task_hash    TEXT NOT NULL CHECK (length(task_hash) = 64),
        name         TEXT NOT NULL CHECK (length(name) > 0),
        mtime_ns     INTEGER NOT NULL CHECK (mtime_ns >= 0),
        processed_at REAL NOT NULL,
        PRIMARY KEY (task_hash, name)
    )
    """,
    """
    CREATE TABLE failed_files (
        task_hash      TEXT NOT NULL CHECK (length(task_hash) = 64),
        name           TEXT NOT NULL CHECK (length(name) > 0),
        reason         TEXT NOT NULL,
        exception_type TEXT NOT NULL,
        level          TEXT NOT NULL CHECK (level IN ('file', 'batch')),
        recorded_at    REAL NOT NULL,
        PRIMARY KEY (task_hash, name)
    )
    """,
    """
    CREATE TABLE model_usage (
        model TEXT PRIMARY KEY NOT NULL,
        used  INTEGER NOT NULL CHECK (used >= 0)
    )
    """,
)

#: Every migration in order; entry ``i`` takes a store from version ``i`` to ``i + 1``.
MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1_INITIAL, _V2_POD_FILES_AND_USAGE)
#: The schema version this fedloom writes and the newest it can open.
SCHEMA_VERSION = len(MIGRATIONS)


def prepare_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Check that ``conn`` holds a fedloom store this version can open, and migrate it.

    ``conn`` must be in autocommit mode (``isolation_level=None``).

    Raises:
        SchemaVersionError: the file was written by a newer schema version.
        StoreError: the file is another program's SQLite database.
        sqlite3.Error: the file could not be read or written (the caller translates it).
    """
    migrate(conn, path, MIGRATIONS, APPLICATION_ID, _check_version, what="store")


def migrate(
    conn: sqlite3.Connection,
    path: Path,
    migrations: tuple[tuple[str, ...], ...],
    application_id: int,
    check_version: Callable[[sqlite3.Connection, Path], int],
    *,
    what: str,
) -> None:
    """Run the ``migrations`` from the file's schema version on, one transaction each.

    ``check_version`` reads the file's version and raises when this fedloom must not
    open it; it runs again inside each transaction, as another process may have
    migrated the file meanwhile. Used by the pod and modeller stores and the hub's.
    """
    version = check_version(conn, path)
    while version < len(migrations):
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            version = check_version(conn, path)  # another process may have migrated it
            if version >= len(migrations):
                break
            for statement in migrations[version]:
                conn.execute(statement)
            # PRAGMA takes no parameters; both values are integers.
            conn.execute(f"PRAGMA application_id = {int(application_id)}")
            conn.execute(f"PRAGMA user_version = {int(version + 1)}")
        logger.info("migrated %s %s to schema version %d", what, path, version + 1)
        version += 1


def _check_version(conn: sqlite3.Connection, path: Path) -> int:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    application_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
    if application_id != APPLICATION_ID:
        empty = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        if not (empty and version == 0 and application_id == 0):
            raise StoreError(
                f"{path} is an SQLite database that fedloom did not create; "
                "give the store a path of its own"
            )
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"store {path} has schema version {version}, but this fedloom reads versions up "
            f"to {SCHEMA_VERSION}; upgrade fedloom to open it"
        )
    return version


class Database:
    """One SQLite connection, its lock, and transactions that translate sqlite3 errors.

    The connection is in autocommit mode (``isolation_level=None``) and shared between
    threads (``check_same_thread=False``) under a lock: the modeller calls from its event
    loop thread and from worker threads. Opening checks the schema version before anything
    else, migrates the file, then turns on WAL and foreign keys.

    Raises:
        ConfigError: ``path`` names no file (``""``, ``":memory:"``, a ``file:`` URI).
        SchemaVersionError: the file was written by a newer schema version.
        StoreError: the file is not a fedloom SQLite store or cannot be opened.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        raw = os.fspath(path)
        if not isinstance(raw, str) or raw in ("", ":memory:") or raw.startswith("file:"):
            raise ConfigError(
                f"store path must name a file, got {raw!r}; use a Memory* store for no file"
            )
        self.path = Path(raw).resolve()
        self.folder = self.path.parent
        self._lock = threading.Lock()
        self._closed = False
        self._conn = _connect(self.path)

    @contextmanager
    def transaction(self, action: str, *, write: bool) -> Iterator[sqlite3.Connection]:
        """Hold the lock and one transaction (IMMEDIATE for writes); roll back on any error."""
        with self._lock:
            if self._closed:
                raise StoreError(f"cannot {action}: the store at {self.path} is closed")
            try:
                with self._conn:
                    self._conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                    yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(f"cannot {action} in store {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._conn.close()


def _connect(path: Path) -> sqlite3.Connection:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the folder of store {path}: {exc}") from exc
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(
            path, timeout=DEFAULT_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        conn.execute("PRAGMA foreign_keys = ON")
        prepare_schema(conn, path)  # before WAL: never change a file we cannot read
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            logger.warning("store %s runs in journal mode %s, not WAL", path, mode)
    except (FedloomError, sqlite3.Error) as exc:
        if conn is not None:
            conn.close()
        if isinstance(exc, FedloomError):
            raise
        raise StoreError(f"cannot open store {path}: {exc}; is it a fedloom store?") from exc
    return conn
