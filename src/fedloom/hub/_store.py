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

import logging
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from fedloom.crypto import PublicIdentity
from fedloom.errors import (
    ConfigError,
    MessageTooLargeError,
    NotFoundError,
    StoreError,
)
from fedloom.hub._store_core import (
    DATABASE_NAME,
    DEFAULT_SPOOL_THRESHOLD,
    LOCK_NAME,
    MAX_INLINE_FRAME_BYTES,
    SPOOL_DIR_NAME,
    _StoreCore,
)
from fedloom.hub._store_files import (
    HUB_APPLICATION_ID,
    HUB_SCHEMA_VERSION,
    _discard,
)
from fedloom.hub._store_rows import (
    _MAX_SQL_INTEGER,
    SIGNATURE_BYTES,
    HubStoreStatistics,
    RegisteredIdentity,
    StoredMessage,
    _check_message_id,
    _check_sequence,
    _check_signature,
    _check_text,
    _frame_view,
    _insert,
    _is_int,
    _last_sequence,
    _require_sender,
)
from fedloom.transport._routing import ROLES

# The schema constants live with the database file's helpers, the store's folder and rows
# with theirs; all are re-exported here.
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

MAX_FRAME_BYTES = 2 << 30
"""The largest frame the store accepts (2 GiB)."""


_MESSAGE_COLUMNS = "id, sender, recipient, sequence, size"


class HubStore(_StoreCore):
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
            self._spool.unlink(message_id)
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
        temp = self._spool.write_temp(view)  # outside the lock: the slow part
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
                    published = self._spool.path(message.id)
                    self._spool.publish(temp, published)
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
        data = self._spool.read(message_id)
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
            self._spool.unlink(message_id)
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

    def __enter__(self) -> HubStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _identity_from_row(self, row: tuple[Any, ...]) -> RegisteredIdentity:
        name, role, ed25519_public, x25519_public = row
        try:
            public = PublicIdentity(str(name), bytes(ed25519_public), bytes(x25519_public))
        except ConfigError as exc:
            raise StoreError(f"hub store {self._path} holds a malformed identity: {exc}") from exc
        return RegisteredIdentity(str(name), str(role), public)
