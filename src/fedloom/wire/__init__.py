"""The fedloom wire format: messages as a msgpack envelope plus zero-copy tensor buffers.

No I/O happens here, and nothing is ever unpickled: :func:`decode` accepts exactly the
frames :func:`encode` produces and raises :class:`~fedloom.errors.WireError` for any other
bytes.
"""

from fedloom.wire._checks import ALLOWED_DTYPES
from fedloom.wire._codec import (
    DEFAULT_MAX_MESSAGE_BYTES,
    FRAME_PREFIX_SIZE,
    decode,
    encode,
    frame_size,
)
from fedloom.wire._message import Body, Message, MessageType

__all__ = [
    "ALLOWED_DTYPES",
    "Body",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "FRAME_PREFIX_SIZE",
    "Message",
    "MessageType",
    "decode",
    "encode",
    "frame_size",
]
