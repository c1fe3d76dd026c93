"""What travels on a hub connection: one gRPC bidirectional stream of byte frames.

Every stream item is one byte of :class:`Kind` followed by its payload. Control frames carry
a small msgpack map; a message (an encoded, signed fedloom frame of up to the hub's size
cap) travels as one ``*_START`` control frame announcing its size and signature followed
by raw ``*_DATA`` chunks, so no single gRPC message is larger than :data:`CHUNK_BYTES`.
Chunks of one message are never interleaved with another message's; the hub may send its
answers (RESULT, DIRECTORY) between the chunks of a delivery, the client sends nothing
between the chunks of a message.

Connection life: client HELLO → hub CHALLENGE (random nonce) → client AUTH (signature of
the nonce) → hub WELCOME; then SEND/RESULT, DELIVER/ACK and LOOKUP/DIRECTORY in any order.
A fatal problem is answered with FAIL and the stream is closed. FAIL, and a RESULT that
refuses a message, carry the error's catalogue ``code`` and its public ``message``
(:meth:`fedloom.errors.FedloomError.public_text`), never a class name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from enum import IntEnum
from typing import Any

import msgpack

from fedloom.errors import (
    FedloomError,
    MessageTooLargeError,
    ProtocolError,
    error_from_public,
)

SERVICE_METHOD = "/fedloom.Hub/Connect"
CHUNK_BYTES = 4 << 20
"""Payload bytes per data chunk; the gRPC message limit is set a little above it."""
GRPC_MESSAGE_LIMIT = CHUNK_BYTES + (64 << 10)
MAX_CONTROL_BYTES = 64 << 10
AUTH_DOMAIN = b"fedloom-hub-auth-v1\x00"
MAX_ERROR_CHARS = 2000
"""Characters of an error's public text a FAIL or RESULT frame carries."""


class Kind(IntEnum):
    """The first byte of every stream item."""

    HELLO = 0x01
    AUTH = 0x02
    SEND_START = 0x03
    SEND_DATA = 0x04
    ACK = 0x05
    LOOKUP = 0x06
    CHALLENGE = 0x81
    WELCOME = 0x82
    RESULT = 0x83
    DELIVER_START = 0x84
    DELIVER_DATA = 0x85
    DIRECTORY = 0x86
    FAIL = 0x87


DATA_KINDS = frozenset({Kind.SEND_DATA, Kind.DELIVER_DATA})


def auth_payload(nonce: bytes, identity: str) -> bytes:
    """What a client signs to prove it holds ``identity``'s key for this connection."""
    return AUTH_DOMAIN + nonce + identity.encode("utf-8")


def control(kind: Kind, fields: Mapping[str, Any]) -> bytes:
    """A control frame."""
    return bytes([kind]) + msgpack.packb(dict(fields), use_bin_type=True)


def parse(item: object) -> tuple[Kind, memoryview]:
    """Split a stream item into its kind and payload.

    Raises:
        ProtocolError: the item is not bytes, empty, or of an unknown kind.
    """
    if not isinstance(item, bytes) or not item:
        raise ProtocolError("a hub stream item must be non-empty bytes")
    try:
        kind = Kind(item[0])
    except ValueError:
        raise ProtocolError(f"unknown hub frame kind 0x{item[0]:02x}") from None
    return kind, memoryview(item)[1:]


def fields_of(
    kind: Kind, payload: memoryview, required: Mapping[str, type | tuple[type, ...]]
) -> dict[str, Any]:
    """The fields of a control frame, checked against ``required`` (name → type).

    Raises:
        ProtocolError: the payload is not a msgpack map, is too large, or lacks a field or
            holds one of the wrong type.
    """
    if kind in DATA_KINDS:
        raise ProtocolError(f"{kind.name} is a data frame, not a control frame")
    if len(payload) > MAX_CONTROL_BYTES:
        raise ProtocolError(f"{kind.name} frame of {len(payload)} bytes is too large")
    try:
        fields = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            max_array_len=1024,
            max_map_len=64,
        )
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise ProtocolError(f"malformed {kind.name} frame: {type(exc).__name__}") from None
    if not isinstance(fields, dict):
        raise ProtocolError(f"a {kind.name} frame must hold a map")
    for name, expected in required.items():
        value = fields.get(name)
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is int):
            raise ProtocolError(f"{kind.name} frame needs field {name!r} of the right type")
    return fields


def chunks(kind: Kind, frame: bytes | memoryview) -> Iterator[bytes]:
    """The data items that carry ``frame`` (at least one, possibly empty)."""
    view = memoryview(frame)
    prefix = bytes([kind])
    for start in range(0, max(len(view), 1), CHUNK_BYTES):
        yield prefix + view[start : start + CHUNK_BYTES]


class Reassembly:
    """Collects the data chunks of one message announced by a ``*_START`` frame.

    Chunks are kept as views of the received items and joined once at the end: one copy,
    and no zero-filled buffer of the whole size up front.
    """

    def __init__(self, size: int, max_bytes: int, header: dict[str, Any]) -> None:
        if size < 0:
            raise ProtocolError("a message size cannot be negative")
        if size > max_bytes:
            raise MessageTooLargeError(
                f"a message of {size} bytes exceeds the hub's limit of {max_bytes} bytes"
            )
        self.header = header
        self.size = size
        self._chunks: list[memoryview] = []
        self._filled = 0
        self._frame: bytes | None = None

    def add(self, chunk: memoryview) -> bool:
        """Append one chunk; True when the message is complete.

        Raises:
            ProtocolError: more bytes arrived than were announced.
        """
        end = self._filled + len(chunk)
        if end > self.size:
            raise ProtocolError("a message carried more bytes than its start frame announced")
        self._chunks.append(chunk)
        self._filled = end
        if end == self.size:
            self._frame = b"".join(self._chunks)
            self._chunks = []
            return True
        return False

    @property
    def frame(self) -> bytes:
        """The complete message."""
        if self._frame is None:
            raise ProtocolError("the message is not complete yet")
        return self._frame


def error_fields(error: FedloomError) -> dict[str, str | int]:
    """A refusal as FAIL or RESULT fields: the error's catalogue code and public text.

    Never its class name or its local message.
    """
    return {"code": error.code, "message": error.public_text()[:MAX_ERROR_CHARS]}


def error_from_fields(fields: Mapping[str, Any]) -> FedloomError:
    """Rebuild the typed error a hub reported, by its code.

    An unknown or missing code is a ProtocolError that names it; a malformed field never
    raises.
    """
    message = fields.get("message", "")
    text = message[:MAX_ERROR_CHARS] if isinstance(message, str) else ""
    return error_from_public(fields.get("code"), f"hub: {text}")
