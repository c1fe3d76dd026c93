"""The hub store's rows: the records it returns, and the checks and SQL that write them.

The checks refuse a bad argument with a one-line ``ConfigError`` before any SQL runs;
:func:`_insert` queues one message inside the caller's transaction.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from fedloom.crypto import PublicIdentity
from fedloom.errors import (
    ConfigError,
    UnknownIdentityError,
    UnknownRecipientError,
)

SIGNATURE_BYTES = 64
"""Length of the Ed25519 signature stored with every frame."""

_MAX_SQL_INTEGER = (1 << 63) - 1


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
