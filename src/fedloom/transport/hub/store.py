# Over 500 lines on purpose (issue 14): HubStore is one class around one SQLite connection
# and one lock; splitting it would split that lock's rules. Its file helpers (schema,
# opening, folder lock) are in store_files.py.
"""The hub's durable mailboxes: one SQLite file plus a spool folder for large frames.

Layout of ``data_dir`` (created with mode 0700):

- ``hub.db``: registered identities, the last accepted sequence number of every sender, and
  the queued messages (frames up to ``spool_threshold`` bytes inline);
- ``spool/<id>.frame``: each larger frame, written to a temporary name and renamed into place
  *before* the row that refers to it is committed. A crash therefore leaves at worst a file
  that no row refers to, which the next open deletes;
- ``hub.lock``: locked while a store is open, so two hubs never share one folder.

A message is durable once :meth:`HubStore.append` has returned: with ``synchronous="NORMAL"``
(WAL) the commit survives the hub process being killed; ``"FULL"`` also flushes the WAL and
spool files to disk, so it survives power loss too. It stays queued until its recipient
acknowledges it. Sequence numbers are kept per sender (bound to the sender's signing key) and
outlive restarts, so a replayed or reordered message is recognised and stored no second time.

Every write is one ``BEGIN IMMEDIATE`` transaction, so a failed check or a crash leaves the
store as it was. Values travel only as SQL parameters; the only text ever joined into SQL is
constants of this module.
"""

from __future__ import annotations

import io
import logging
import os
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from fedloom.crypto import PublicIdentity
from fedloom.errors import (
    ConfigError,
    MessageTooLargeError,
    NotFoundError,
    StoreError,
    UnknownIdentityError,
    UnknownRecipientError,
)
from fedloom.transport.hub.store_files import (
    HUB_APPLICATION_ID,
    HUB_SCHEMA_VERSION,
    _connect,
    _discard,
    _fsync_dir,
    _lock_folder,
    _unlock_folder,
)
from fedloom.transport.routing import ROLES

# The schema constants live with the database file's helpers and are re-exported here.
__all__ = [
    "DATABASE_NAME",
    "DEFAULT_SPOOL_THRESHOLD",
    "HUB_APPLICATION_ID",
    "HUB_ROLES",
    "HUB_SCHEMA_VERSION",
    "LOCK_NAME",
    "MAX_FRAME_BYTES",
    "MAX_INLINE_FRAME_BYTES",
    "SIGNATURE_BYTES",
    "SPOOL_DIR_NAME",
    "HubStore",
    "HubStoreStatistics",
    "RegisteredIdentity",
    "StoredMessage",
]

logger = logging.getLogger(__name__)

HUB_ROLES: Final = ROLES
"""The roles an identity can be registered with."""

DEFAULT_SPOOL_THRESHOLD = 1 << 20
"""Frames larger than this many bytes are kept in spool files rather than in the database."""

MAX_INLINE_FRAME_BYTES = 64 << 20
"""The largest ``spool_threshold`` allowed: bigger frames never go into the database."""

MAX_FRAME_BYTES = 2 << 30
"""The largest frame the store accepts (2 GiB)."""

SIGNATURE_BYTES = 64
"""Length of the Ed25519 signature stored with every frame."""


DATABASE_NAME = "hub.db"
SPOOL_DIR_NAME = "spool"
LOCK_NAME = "hub.lock"

_MAX_SQL_INTEGER = (1 << 63) - 1
_SYNCHRONOUS_MODES = {"NORMAL": "PRAGMA synchronous = NORMAL", "FULL": "PRAGMA synchronous = FULL"}
_SPOOL_SUFFIX = ".frame"
_TEMP_PREFIX = ".incoming-"
_TEMP_SUFFIX = ".tmp"

_MESSAGE_COLUMNS = "id, sender, recipient, sequence, size"


@dataclass(frozen=True)
class RegisteredIdentity:
    """An identity the hub keeps a mailbox for."""

    name: str
    role: str
    public: PublicIdentity


@dataclass(frozen=True)
class StoredMessage:
    """A queued message without its bytes; ``id`` increases with every accepted message."""

    id: int
    sender: str
    recipient: str
    sequence: int
    size: int


@dataclass(frozen=True)
class HubStoreStatistics:
    """Registered identities, and the messages and frame bytes waiting for delivery."""

    identities: int
    queued_messages: int
    queued_bytes: int


class HubStore:
    """Durable mailboxes in ``data_dir``: identities, sender sequences, queued messages.

    Safe to share between threads (one lock guards the connection), so large appends may run
    in ``asyncio.to_thread`` while the event loop serves everything else. Opening deletes
    spool files no message refers to, and drops (logging an error) every message whose
    spool file is missing or truncated.

    Args:
        data_dir: the hub's folder, created with mode 0700 if missing.
        spool_threshold: frames larger than this many bytes go to spool files (at most
            :data:`MAX_INLINE_FRAME_BYTES`).
        synchronous: ``"NORMAL"`` (survives a killed process) or ``"FULL"`` (also survives
            power loss: every commit and spool file is flushed to disk).

    Raises:
        ConfigError: ``spool_threshold`` or ``synchronous`` is not valid.
        SchemaVersionError: ``hub.db`` is not a fedloom hub database or was written by a
            newer fedloom; the file is left untouched.
        StoreError: the folder is in use by another open hub store, or cannot be used.
    """

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
        self._spool = self._folder / SPOOL_DIR_NAME
        self._spool_threshold = spool_threshold
        self._full = mode == "FULL"
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._spool.mkdir(mode=0o700, exist_ok=True)
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

    def register(self, public: PublicIdentity, role: str, *, replace: bool = False) -> None:
        """Give ``public`` a mailbox, registered as ``role``.

        Registering the same name with the same keys and role again does nothing. Replacing
        the signing key starts the identity's sequence numbers again from 0 (frames signed
        with the old key no longer verify, so they cannot be replayed); messages already
        queued for the identity stay queued.

        Raises:
            ConfigError: ``role`` is not one of :data:`HUB_ROLES`, ``public`` is not a
                :class:`~fedloom.crypto.PublicIdentity`, or the name is registered with other
                keys or another role and ``replace`` is false.
        """
        if not isinstance(public, PublicIdentity):
            raise ConfigError(f"register needs a PublicIdentity, got {type(public).__name__}")
        if role not in HUB_ROLES:
            raise ConfigError(f"hub role must be one of {', '.join(HUB_ROLES)}, got {role!r}")
        wanted = (role, public.ed25519_public, public.x25519_public)
        with self._transaction(f"register {public.name!r}") as conn:
            row = conn.execute(
                "SELECT role, ed25519_public, x25519_public FROM identities WHERE name = ?",
                (public.name,),
            ).fetchone()
            if row is not None and (row[0], bytes(row[1]), bytes(row[2])) == wanted:
                return
            if row is not None and not replace:
                raise ConfigError(
                    f"identity {public.name!r} is already registered as a {row[0]} with other "
                    "keys or another role; pass replace=True to replace it"
                )
            conn.execute(
                "INSERT INTO identities (name, role, ed25519_public, x25519_public)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET role = excluded.role,"
                " ed25519_public = excluded.ed25519_public,"
                " x25519_public = excluded.x25519_public",
                (public.name, *wanted),
            )
            conn.execute(
                "DELETE FROM sequences WHERE sender = ? AND ed25519_public != ?",
                (public.name, public.ed25519_public),
            )

    def remove(self, name: str) -> None:
        """Forget identity ``name`` and drop the messages queued for it.

        Messages it sent that wait in other mailboxes stay. Its last sequence number is
        kept, so re-registering the same key cannot reopen the door to replays.

        Raises:
            NotFoundError: no identity of that name is registered.
        """
        _check_text(name, "identity name")
        with self._transaction(f"remove {name!r}") as conn:
            if conn.execute("SELECT 1 FROM identities WHERE name = ?", (name,)).fetchone() is None:
                raise NotFoundError(f"no identity named {name!r} is registered with the hub")
            spooled = [
                int(row[0])
                for row in conn.execute(
                    "SELECT id FROM messages WHERE recipient = ? AND spooled = 1", (name,)
                )
            ]
            dropped = conn.execute("DELETE FROM messages WHERE recipient = ?", (name,)).rowcount
            conn.execute("DELETE FROM identities WHERE name = ?", (name,))
        for message_id in spooled:
            self._unlink_spool(message_id)
        if dropped:
            logger.info("removed identity %r and %d message(s) queued for it", name, dropped)

    def identity(self, name: str) -> RegisteredIdentity | None:
        """The registered identity called ``name``, or None."""
        _check_text(name, "identity name")
        with self._reading("read an identity") as conn:
            row = conn.execute(
                "SELECT name, role, ed25519_public, x25519_public FROM identities WHERE name = ?",
                (name,),
            ).fetchone()
        return None if row is None else self._identity_from_row(row)

    def identities(self) -> list[RegisteredIdentity]:
        """Every registered identity, sorted by name."""
        with self._reading("list identities") as conn:
            rows = conn.execute(
                "SELECT name, role, ed25519_public, x25519_public FROM identities ORDER BY name"
            ).fetchall()
        return [self._identity_from_row(row) for row in rows]

    def last_sequence(self, sender: str) -> int:
        """The highest sequence number accepted from ``sender`` (0 if none)."""
        _check_text(sender, "sender")
        with self._reading("read a sequence number") as conn:
            return _last_sequence(conn, sender)

    def append(
        self,
        sender: str,
        recipient: str,
        sequence: int,
        frame: bytes | memoryview,
        signature: bytes,
    ) -> StoredMessage | None:
        """Queue ``frame`` for ``recipient`` unless ``sequence`` was already passed.

        In one transaction: a ``sequence`` at or below the sender's last one is a duplicate,
        replay or reordering, and nothing is stored (returns None); otherwise the sequence
        becomes the sender's last and the message is queued. A large frame is written to its
        spool file with one write, before the commit. Once this returns, the message
        survives a crash of the hub.

        Raises:
            ConfigError: ``sequence`` is not an integer from 1 to 2**63 - 1, ``signature`` is
                not 64 bytes, or ``frame`` is not a contiguous bytes-like object.
            MessageTooLargeError: ``frame`` is larger than :data:`MAX_FRAME_BYTES`.
            UnknownIdentityError: ``sender`` is not registered.
            UnknownRecipientError: ``recipient`` is not registered.
            StoreError: the message could not be written; nothing was stored and the
                sender's last sequence number is unchanged.
        """
        _check_text(sender, "sender")
        _check_text(recipient, "recipient")
        _check_sequence(sequence)
        signature = _check_signature(signature)
        view = _frame_view(frame)
        size = view.nbytes
        if size > MAX_FRAME_BYTES:
            raise MessageTooLargeError(
                f"a {size}-byte frame is larger than the hub's limit of {MAX_FRAME_BYTES} bytes"
            )
        action = f"queue message {sequence} from {sender!r} to {recipient!r}"
        if size <= self._spool_threshold:
            with self._transaction(action) as conn:
                return _insert(
                    conn,
                    sender,
                    recipient,
                    sequence=sequence,
                    signature=signature,
                    frame=view,
                    spooled=False,
                )
        with self._reading(action) as conn:  # spare writing a large replayed frame at all
            _require_sender(conn, sender)
            if sequence <= _last_sequence(conn, sender):
                return None
        temp = self._write_temp(view)  # outside the lock: the slow part
        published: Path | None = None
        try:
            with self._transaction(action) as conn:
                message = _insert(
                    conn,
                    sender,
                    recipient,
                    sequence=sequence,
                    signature=signature,
                    frame=view,
                    spooled=True,
                )
                if message is not None:
                    published = self._spool_path(message.id)
                    self._publish(temp, published)
            return message
        except BaseException:
            if published is not None:  # renamed, but the row was never committed
                _discard(published)
            raise
        finally:
            _discard(temp)

    def pending(self, recipient: str, *, after_id: int = 0, limit: int = 64) -> list[StoredMessage]:
        """Up to ``limit`` messages queued for ``recipient`` with an id above ``after_id``.

        The list is in id (arrival) order; an unknown recipient has an empty mailbox.

        Raises:
            ConfigError: ``after_id`` is negative or ``limit`` is below 1.
        """
        _check_text(recipient, "recipient")
        if not _is_int(after_id) or after_id < 0:
            raise ConfigError(f"after_id must be an integer >= 0, got {after_id!r}")
        if not _is_int(limit) or limit < 1:
            raise ConfigError(f"limit must be an integer >= 1, got {limit!r}")
        with self._reading("list pending messages") as conn:
            rows = conn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE recipient = ? AND id > ?"
                " ORDER BY id LIMIT ?",
                (recipient, min(after_id, _MAX_SQL_INTEGER), limit),
            ).fetchall()
        return [StoredMessage(*row) for row in rows]

    def load(self, message_id: int) -> tuple[bytes, bytes]:
        """The frame and signature of a queued message.

        Raises:
            NotFoundError: no such message is queued (acknowledged, or its spool file was
                lost; the latter is logged as an error and the message dropped).
            StoreError: the spool file could not be read.
        """
        message_id = _check_message_id(message_id)
        with self._reading("load a message") as conn:
            row = conn.execute(
                "SELECT size, signature, spooled, frame FROM messages WHERE id = ?",
                (message_id,),
            ).fetchone()
        if row is None:
            raise NotFoundError(f"message {message_id} is not queued at the hub")
        size, signature, spooled, frame = row
        if not spooled:
            return bytes(frame), bytes(signature)
        path = self._spool_path(message_id)
        try:
            with io.FileIO(path, "r") as stream:
                data = stream.readall()
        except FileNotFoundError:
            data = None
        except OSError as exc:
            raise StoreError(
                f"cannot read spool file {path} of message {message_id}: {exc}"
            ) from exc
        if data is None or len(data) != size:
            why = "is missing" if data is None else f"holds {len(data)} of {size} bytes"
            self._drop_lost(message_id, why)
            raise NotFoundError(f"message {message_id} is lost: its spool file {why}")
        return data, bytes(signature)

    def acknowledge(self, recipient: str, message_id: int) -> bool:
        """Delete message ``message_id`` once ``recipient`` has it.

        Returns False, and deletes nothing, when no such message is queued for
        ``recipient`` (already acknowledged, or queued for someone else).
        """
        _check_text(recipient, "recipient")
        message_id = _check_message_id(message_id)
        with self._transaction(f"acknowledge message {message_id}") as conn:
            row = conn.execute(
                "SELECT spooled FROM messages WHERE id = ? AND recipient = ?",
                (message_id, recipient),
            ).fetchone()
            if row is None:
                return False
            conn.execute("DELETE FROM messages WHERE id = ?", (message_id,))
        if row[0]:
            self._unlink_spool(message_id)
        return True

    def queued(self, recipient: str) -> int:
        """How many messages wait for ``recipient`` (0 for an unknown name)."""
        _check_text(recipient, "recipient")
        with self._reading("count queued messages") as conn:
            row = conn.execute(
                "SELECT count(*) FROM messages WHERE recipient = ?", (recipient,)
            ).fetchone()
        return int(row[0])

    def statistics(self) -> HubStoreStatistics:
        """Counts of identities and queued messages, and the queued frame bytes."""
        with self._reading("count messages") as conn:
            identities = conn.execute("SELECT count(*) FROM identities").fetchone()[0]
            messages, size = conn.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM messages"
            ).fetchone()
        return HubStoreStatistics(int(identities), int(messages), int(size))

    def close(self) -> None:
        """Release the database and the folder; closing twice is allowed, other calls are not."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._conn.close()
            _unlock_folder(self._folder_lock)

    def __enter__(self) -> HubStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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

    def _identity_from_row(self, row: tuple[Any, ...]) -> RegisteredIdentity:
        name, role, ed25519_public, x25519_public = row
        try:
            public = PublicIdentity(str(name), bytes(ed25519_public), bytes(x25519_public))
        except ConfigError as exc:
            raise StoreError(f"hub store {self._path} holds a malformed identity: {exc}") from exc
        return RegisteredIdentity(str(name), str(role), public)

    def _spool_path(self, message_id: int) -> Path:
        return self._spool / f"{message_id}{_SPOOL_SUFFIX}"

    def _write_temp(self, view: memoryview) -> Path:
        try:
            descriptor, name = tempfile.mkstemp(
                prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=self._spool
            )
        except OSError as exc:
            raise StoreError(f"cannot create a spool file in {self._spool}: {exc}") from exc
        path = Path(name)
        try:
            written = 0
            while written < len(view):  # one write; the loop only resumes a short write
                written += os.write(descriptor, view[written:])
            if self._full:
                os.fsync(descriptor)
        except OSError as exc:
            _discard(path)
            raise StoreError(f"cannot write spool file {path}: {exc}") from exc
        finally:
            os.close(descriptor)
        return path

    def _publish(self, temp: Path, final: Path) -> None:
        try:
            os.replace(temp, final)
        except OSError as exc:
            raise StoreError(f"cannot move spool file {temp} to {final}: {exc}") from exc
        if self._full:
            _fsync_dir(self._spool)

    def _unlink_spool(self, message_id: int) -> None:
        path = self._spool_path(message_id)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # harmless: the next open removes files no row refers to
            logger.warning("could not remove spool file %s: %s", path, exc)

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
        self._unlink_spool(message_id)

    def _recover(self) -> None:
        """Delete spool files no row refers to; drop rows whose spool file is gone."""
        files: dict[int, Path] = {}
        try:
            entries = list(os.scandir(self._spool))
        except OSError as exc:
            raise StoreError(f"cannot list the spool folder {self._spool}: {exc}") from exc
        for entry in entries:
            name = entry.name
            if name.startswith(_TEMP_PREFIX) and name.endswith(_TEMP_SUFFIX):
                _discard(Path(entry.path))  # an append that never finished
                continue
            stem = name.removesuffix(_SPOOL_SUFFIX)
            if stem != name and stem.isascii() and stem.isdigit() and str(int(stem)) == stem:
                files[int(stem)] = Path(entry.path)
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


# --- module helpers --------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_text(value: object, what: str) -> None:
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a str, got {type(value).__name__}")


def _check_sequence(sequence: object) -> None:
    if not (isinstance(sequence, int) and _is_int(sequence) and 1 <= sequence <= _MAX_SQL_INTEGER):
        raise ConfigError(
            f"sequence number must be an integer from 1 to 2**63 - 1, got {sequence!r}"
        )


def _check_message_id(message_id: object) -> int:
    if not (isinstance(message_id, int) and _is_int(message_id)):
        raise ConfigError(f"message id must be an integer, got {message_id!r}")
    return message_id if message_id <= _MAX_SQL_INTEGER else -1  # -1: matches no message


def _check_signature(signature: object) -> bytes:
    if not isinstance(signature, bytes | bytearray | memoryview):
        raise ConfigError(f"signature must be bytes, got {type(signature).__name__}")
    raw = bytes(signature)
    if len(raw) != SIGNATURE_BYTES:
        raise ConfigError(f"signature must be {SIGNATURE_BYTES} bytes, got {len(raw)}")
    return raw


def _frame_view(frame: object) -> memoryview:
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise ConfigError(f"frame must be bytes or a memoryview, got {type(frame).__name__}")
    view = memoryview(frame)
    if not view.c_contiguous:
        raise ConfigError("frame must be a contiguous buffer")
    return view.cast("B") if view.format != "B" or view.ndim != 1 else view


def _require_sender(conn: sqlite3.Connection, sender: str) -> bytes:
    row = conn.execute("SELECT ed25519_public FROM identities WHERE name = ?", (sender,)).fetchone()
    if row is None:
        raise UnknownIdentityError(
            f"sender {sender!r} is not registered with the hub; register its public identity first"
        )
    return bytes(row[0])


def _last_sequence(conn: sqlite3.Connection, sender: str) -> int:
    row = conn.execute("SELECT last_sequence FROM sequences WHERE sender = ?", (sender,)).fetchone()
    return 0 if row is None else int(row[0])


def _insert(
    conn: sqlite3.Connection,
    sender: str,
    recipient: str,
    *,
    sequence: int,
    signature: bytes,
    frame: memoryview,
    spooled: bool,
) -> StoredMessage | None:
    """Queue one message inside the caller's transaction (a spooled frame is not stored)."""
    key = _require_sender(conn, sender)
    if sequence <= _last_sequence(conn, sender):
        return None
    if conn.execute("SELECT 1 FROM identities WHERE name = ?", (recipient,)).fetchone() is None:
        raise UnknownRecipientError(
            f"recipient {recipient!r} is not registered with the hub; check the name"
        )
    conn.execute(
        "INSERT INTO sequences (sender, ed25519_public, last_sequence) VALUES (?, ?, ?)"
        " ON CONFLICT (sender) DO UPDATE SET ed25519_public = excluded.ed25519_public,"
        " last_sequence = excluded.last_sequence",
        (sender, key, sequence),
    )
    cursor = conn.execute(
        "INSERT INTO messages (sender, recipient, sequence, size, signature, spooled, frame)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            sender,
            recipient,
            sequence,
            frame.nbytes,
            signature,
            int(spooled),
            None if spooled else frame,
        ),
    )
    message_id = cursor.lastrowid
    assert message_id is not None  # an INSERT into a rowid table always sets it
    return StoredMessage(message_id, sender, recipient, sequence, frame.nbytes)
