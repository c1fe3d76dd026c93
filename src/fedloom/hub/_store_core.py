"""The open hub store: its folder, the folder lock, one SQLite connection and one lock.

Every read and write of :class:`~fedloom.hub._store.HubStore` goes through
:meth:`_StoreCore._reading` or :meth:`_StoreCore._transaction`, which hold the lock that
makes the store safe to share between threads. Opening checks the spool folder against the
queued rows (:meth:`_StoreCore._recover`).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedloom.errors import (
    ConfigError,
    StoreError,
)
from fedloom.hub._store_files import (
    _connect,
    _discard,
    _lock_folder,
    _unlock_folder,
)
from fedloom.hub._store_spool import _Spool

logger = logging.getLogger(__name__)

DEFAULT_SPOOL_THRESHOLD = 1 << 20
"""Frames larger than this many bytes are kept in spool files rather than in the database."""

MAX_INLINE_FRAME_BYTES = 64 << 20
"""The largest ``spool_threshold`` allowed: bigger frames never go into the database."""


DATABASE_NAME = "hub.db"
SPOOL_DIR_NAME = "spool"
LOCK_NAME = "hub.lock"

_SYNCHRONOUS_MODES = {"NORMAL": "PRAGMA synchronous = NORMAL", "FULL": "PRAGMA synchronous = FULL"}


class _StoreCore:
    """The folder, connection and lock under a :class:`~fedloom.hub._store.HubStore`."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        spool_threshold: int = DEFAULT_SPOOL_THRESHOLD,
        synchronous: str = "NORMAL",
    ) -> None:
        if (
            not isinstance(spool_threshold, int)
            or isinstance(spool_threshold, bool)
            or not 0 <= spool_threshold <= MAX_INLINE_FRAME_BYTES
        ):
            raise ConfigError(
                f"spool_threshold must be an integer from 0 to {MAX_INLINE_FRAME_BYTES} "
                f"bytes, got {spool_threshold!r}"
            )
        mode = synchronous.upper() if isinstance(synchronous, str) else synchronous
        if mode not in _SYNCHRONOUS_MODES:
            raise ConfigError(
                f"synchronous must be 'NORMAL' (survives process crashes) or 'FULL' "
                f"(also survives power loss), got {synchronous!r}"
            )
        self._folder = Path(data_dir).resolve()
        self._path = self._folder / DATABASE_NAME
        self._spool = _Spool(self._folder / SPOOL_DIR_NAME, full=mode == "FULL")
        self._spool_threshold = spool_threshold
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._spool.folder.mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the hub folder {self._folder}: {exc}") from exc
        self._folder_lock = _lock_folder(self._folder / LOCK_NAME)
        try:
            self._conn = _connect(self._path, _SYNCHRONOUS_MODES[mode])
        except BaseException:
            _unlock_folder(self._folder_lock)
            raise
        try:
            self._recover()
        except BaseException:
            self._conn.close()
            _unlock_folder(self._folder_lock)
            raise

    @property
    def data_dir(self) -> Path:
        """The hub's folder."""
        return self._folder

    def close(self) -> None:
        """Release the database and the folder; closing twice is allowed, other calls are not."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()
            _unlock_folder(self._folder_lock)

    # --- internals -------------------------------------------------------------------------

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        """Hold the lock and one write transaction; roll back on any error."""
        with self._lock:
            self._require_open(action)
            try:
                with self._conn:
                    self._conn.execute("BEGIN IMMEDIATE")
                    yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(f"cannot {action} in hub store {self._path}: {exc}") from exc

    @contextmanager
    def _reading(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._require_open(action)
            try:
                yield self._conn
            except sqlite3.Error as exc:
                raise StoreError(f"cannot {action} in hub store {self._path}: {exc}") from exc

    def _require_open(self, action: str) -> None:
        if self._closed:
            raise StoreError(f"cannot {action}: the hub store at {self._folder} is closed")

    def _drop_lost(self, message_id: int, why: str) -> None:
        with self._transaction(f"drop lost message {message_id}") as conn:
            row = conn.execute(
                "SELECT sender, recipient, sequence FROM messages WHERE id = ?", (message_id,)
            ).fetchone()
            if row is None:  # acknowledged meanwhile: nothing was lost
                return
            conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
        logger.error(
            "dropped message %d (sequence %d from %r to %r): its spool file %s",
            message_id,
            row[2],
            row[0],
            row[1],
            why,
        )
        self._spool.unlink(message_id)

    def _recover(self) -> None:
        """Delete spool files no row refers to; drop rows whose spool file is gone."""
        files = self._spool.files()
        with self._reading("check the spool folder") as conn:
            rows = dict(conn.execute("SELECT id, size FROM messages WHERE spooled = 1"))
        for message_id in sorted(files.keys() - rows.keys()):
            logger.info("removing spool file %s: no queued message refers to it", files[message_id])
            _discard(files[message_id])
        for message_id, size in sorted(rows.items()):
            path = files.get(message_id)
            if path is None:
                self._drop_lost(message_id, "is missing")
                continue
            try:
                actual = path.stat().st_size
            except OSError as exc:
                raise StoreError(f"cannot inspect spool file {path}: {exc}") from exc
            if actual != size:
                self._drop_lost(message_id, f"holds {actual} of {size} bytes")
