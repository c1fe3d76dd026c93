"""The hub store's files: its SQLite database (schema, migrations, opening) and its folder.

:func:`_connect` opens ``hub.db`` only once it is known to be a hub database this version
reads, migrates it and turns on WAL; :func:`_lock_folder` keeps a second hub out of the
folder; :func:`_fsync_dir` and :func:`_discard` serve the spool files. The mailboxes
themselves are :class:`~fedloom.hub._store.HubStore`.
"""

from __future__ import annotations

import io
import logging
import os
import sqlite3
import sys
from pathlib import Path

from fedloom.errors import FedloomError, SchemaVersionError, StoreError
from fedloom.store._schema import migrate

if sys.platform != "win32":
    import fcntl

logger = logging.getLogger(__name__)

HUB_APPLICATION_ID = 0x464C4842
"""``PRAGMA application_id`` of a hub database ("FLHB" in ASCII)."""

DEFAULT_BUSY_TIMEOUT_S = 5.0

_FEDLOOM_STORE_APPLICATION_ID = 0x464C4F4D  # "FLOM": a pod or modeller store


_V1_INITIAL = (
    """
    CREATE TABLE identities (
        name           TEXT PRIMARY KEY NOT NULL,
        role           TEXT NOT NULL CHECK (role IN ('pod', 'modeller')),
        ed25519_public BLOB NOT NULL,
        x25519_public  BLOB NOT NULL
    )
    """,
    """
    CREATE TABLE sequences (
        sender         TEXT PRIMARY KEY NOT NULL,
        ed25519_public BLOB NOT NULL,
        last_sequence  INTEGER NOT NULL CHECK (last_sequence >= 0)
    )
    """,
    """
    CREATE TABLE messages (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        sender    TEXT NOT NULL,
        recipient TEXT NOT NULL REFERENCES identities (name),
        sequence  INTEGER NOT NULL CHECK (sequence > 0),
        size      INTEGER NOT NULL CHECK (size >= 0),
        signature BLOB NOT NULL,
        spooled   INTEGER NOT NULL CHECK (spooled IN (0, 1)),
        frame     BLOB
    )
    """,
    "CREATE INDEX messages_by_recipient ON messages (recipient, id)",
)

#: Every migration in order; entry ``i`` takes a hub database from version ``i`` to ``i + 1``.
HUB_MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1_INITIAL,)
#: The schema version this fedloom writes and the newest it can open.
HUB_SCHEMA_VERSION = len(HUB_MIGRATIONS)


def _discard(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:
        logger.warning("could not remove spool file %s: %s", path, exc)


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _lock_folder(path: Path) -> io.FileIO | None:
    """Hold an exclusive lock on ``path`` (released when the returned file is closed)."""
    if sys.platform == "win32":  # pragma: no cover - no flock; one hub per folder is on trust
        return None
    try:
        handle = io.FileIO(path, "a")
    except OSError as exc:
        raise StoreError(f"cannot create the hub lock file {path}: {exc}") from exc
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise StoreError(
            f"the hub folder {path.parent} is in use by another open hub store (lock file "
            f"{path}); stop that hub or give this one a folder of its own"
        ) from exc
    return handle


def _unlock_folder(handle: io.FileIO | None) -> None:
    if handle is not None:
        handle.close()  # closing the descriptor releases the flock


def _connect(path: Path, synchronous_pragma: str) -> sqlite3.Connection:
    """Open ``path``, check it is a hub database this version reads, migrate it, turn on WAL.

    Nothing is written before the checks pass, so another program's file stays untouched.
    """
    if not path.exists():
        try:  # the WAL and shared-memory files inherit this mode from the database file
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise StoreError(f"cannot create the hub database {path}: {exc}") from exc
    conn: sqlite3.Connection | None = None
    try:
        conn = sqlite3.connect(
            path, timeout=DEFAULT_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        _prepare_schema(conn, path)  # before WAL: never change a file we cannot read
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            logger.warning("hub database %s runs in journal mode %s, not WAL", path, mode)
        conn.execute(synchronous_pragma)  # one of two constants of this module
        conn.execute("PRAGMA foreign_keys = ON")
    except (FedloomError, sqlite3.Error) as exc:
        if conn is not None:
            conn.close()
        if isinstance(exc, FedloomError):
            raise
        raise StoreError(f"cannot open the hub database {path}: {exc}") from exc
    return conn


def _prepare_schema(conn: sqlite3.Connection, path: Path) -> None:
    migrate(conn, path, HUB_MIGRATIONS, HUB_APPLICATION_ID, _check_version, what="hub database")


def _check_version(conn: sqlite3.Connection, path: Path) -> int:
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        application_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        empty = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    except sqlite3.DatabaseError as exc:
        raise SchemaVersionError(
            f"{path} is not a fedloom hub database ({exc}); move it away or give the hub "
            "another data folder"
        ) from exc
    if application_id != HUB_APPLICATION_ID and not (
        empty and version == 0 and application_id == 0
    ):
        what = (
            "a fedloom pod or modeller store"
            if application_id == _FEDLOOM_STORE_APPLICATION_ID
            else "an SQLite database that the fedloom hub did not create"
        )
        raise SchemaVersionError(
            f"{path} is {what}, not a fedloom hub database; it was left untouched: move it "
            "away or give the hub another data folder"
        )
    if version > HUB_SCHEMA_VERSION:
        raise SchemaVersionError(
            f"hub database {path} has schema version {version}, but this fedloom reads "
            f"versions up to {HUB_SCHEMA_VERSION}; upgrade fedloom to open it"
        )
    return version
