"""Encoding and decoding of fedloom frames.

A frame is::

    prefix   b"FLM", version (u8), header length (u32), blob length (u64), little-endian
    header   msgpack map: type, sender, recipient, task_id, sequence, timestamp, body, tensors
    padding  zero bytes up to the next multiple of 64 (counted from the start of the frame)
    blob     the tensors' bytes; each tensor starts at a multiple of 64 from the blob's start,
             the gaps between them are zero bytes, and the blob ends with the last tensor

``tensors`` is a list of maps ``{name, dtype, shape, offset, nbytes}``. Nothing here is ever
unpickled: the header is strict msgpack and tensors are raw buffers of a closed set of dtypes.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Any, Final

import msgpack
import numpy as np
import numpy.typing as npt

from fedloom.errors import MessageTooLargeError, WireError
from fedloom.wire._checks import (
    ALLOWED_DTYPES,
    align,
    bools_are_valid,
    check_body,
    check_identity,
    check_message_type,
    check_sequence,
    check_tensor_name,
    check_timestamp,
    plain_container,
    type_name,
)
from fedloom.wire._header import HEADER_KEYS, check_layout, read_tensor_table, unpack_header
from fedloom.wire._message import Message

MAGIC: Final = b"FLM"
VERSION: Final = 1
_PREFIX: Final = struct.Struct("<3sBIQ")
FRAME_PREFIX_SIZE: Final[int] = _PREFIX.size
"""Bytes in the fixed prefix that :func:`frame_size` reads."""
DEFAULT_MAX_MESSAGE_BYTES: Final[int] = 1 << 31
"""Default cap on a whole frame: 2 GiB."""
MAX_HEADER_BYTES: Final[int] = 64 << 20
"""Cap on the msgpack header (envelope, body and tensor table): 64 MiB."""

_ZEROS: Final = bytes(64)


def encode(message: Message, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> bytes:
    """Encode ``message`` as one frame.

    Tensors of a non-native byte order are converted to little-endian and non-contiguous
    ones are made contiguous; the tensor bytes are copied once, into the returned frame.

    Raises:
        TypeError: ``message`` is not a :class:`Message`.
        WireError: a field of the wrong type or out of range, an unknown message type, a body
            that msgpack cannot carry (see :data:`~fedloom.wire.Body`; map keys must be str,
            nesting at most 64 deep), a tensor that is not a numpy array, a tensor name that
            is not a str, a dtype outside :data:`ALLOWED_DTYPES` (object, structured, unicode,
            datetime, ...), or a bool tensor holding bytes other than 0 and 1.
        MessageTooLargeError: the header is above 64 MiB or the frame above ``max_bytes``.
    """
    if not isinstance(message, Message):
        raise TypeError(f"encode() takes a Message, not {type_name(message)}")
    check_body(message.body)
    if not isinstance(message.tensors, Mapping):
        raise WireError(f"tensors must be a mapping, not {type_name(message.tensors)}")
    table: list[dict[str, Any]] = []
    blob: list[tuple[int, npt.NDArray[Any]]] = []
    blob_len = 0
    for name, value in message.tensors.items():
        array = _prepare_tensor(check_tensor_name(name), value)
        offset = 0
        if array.nbytes:
            offset = align(blob_len)
            blob_len = offset + array.nbytes
            blob.append((offset, array))
        table.append(
            {
                "name": name,
                "dtype": array.dtype.str,
                "shape": list(array.shape),
                "offset": offset,
                "nbytes": array.nbytes,
            }
        )
    header_map = {
        "type": check_message_type(message.type).value,
        "sender": check_identity("sender", message.sender),
        "recipient": check_identity("recipient", message.recipient),
        "task_id": check_identity("task_id", message.task_id),
        "sequence": check_sequence(message.sequence),
        "timestamp": check_timestamp(message.timestamp),
        "body": message.body,
        "tensors": table,
    }
    try:
        header = msgpack.packb(header_map, use_bin_type=True, default=plain_container)
    except (TypeError, ValueError, OverflowError) as exc:  # e.g. a lone surrogate in a str
        raise WireError(f"the message cannot be packed: {exc}") from exc
    if len(header) > MAX_HEADER_BYTES:
        raise MessageTooLargeError(
            f"message header is {len(header)} bytes, above the {MAX_HEADER_BYTES}-byte cap"
        )
    blob_start = align(FRAME_PREFIX_SIZE + len(header))
    total = blob_start + blob_len
    if total > max_bytes:
        raise MessageTooLargeError(f"message is {total} bytes, above the {max_bytes}-byte cap")
    parts: list[Any] = [
        _PREFIX.pack(MAGIC, VERSION, len(header), blob_len),
        header,
        _ZEROS[: blob_start - FRAME_PREFIX_SIZE - len(header)],
    ]
    position = 0
    for offset, array in blob:
        parts.append(_ZEROS[: offset - position])
        parts.append(array)  # a C-contiguous array is bytes-like: joined without a copy
        position = offset + array.nbytes
    return b"".join(parts)


def _prepare_tensor(name: str, value: object) -> npt.NDArray[Any]:
    if not isinstance(value, np.ndarray) or isinstance(value, np.ma.MaskedArray):
        raise WireError(f"tensor {name!r} must be a numpy array, not {type_name(value)}")
    dtype = value.dtype.newbyteorder("<")
    if dtype.str not in ALLOWED_DTYPES:
        raise WireError(f"tensor {name!r} has dtype {value.dtype.str!r}, which may not travel")
    array = np.asarray(value).astype(dtype, order="C", copy=False)
    if dtype.kind == "b" and not bools_are_valid(array.reshape(-1).view(np.uint8)):
        raise WireError(f"bool tensor {name!r} holds bytes other than 0 and 1")
    return array


def frame_size(
    prefix: bytes | bytearray | memoryview, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> int:
    """The length of the whole frame that starts with ``prefix``.

    Reads only the first :data:`FRAME_PREFIX_SIZE` bytes, so a stream reader can refuse an
    oversized frame before it allocates or reads the rest.

    Raises:
        TypeError: ``prefix`` is not bytes, bytearray or memoryview.
        WireError: fewer than :data:`FRAME_PREFIX_SIZE` bytes, a wrong magic or an unknown
            version.
        MessageTooLargeError: the declared header is above 64 MiB or the frame above
            ``max_bytes``.
    """
    view = _byte_view(prefix)
    if len(view) < FRAME_PREFIX_SIZE:
        raise WireError(f"a frame prefix is {FRAME_PREFIX_SIZE} bytes; got {len(view)}")
    magic, version, header_len, blob_len = _PREFIX.unpack_from(view)
    if magic != MAGIC:
        raise WireError("not a fedloom frame (wrong magic bytes)")
    if version != VERSION:
        raise WireError(f"unsupported wire format version {version} (this is {VERSION})")
    if header_len > MAX_HEADER_BYTES:
        raise MessageTooLargeError(
            f"declared header of {header_len} bytes is above the {MAX_HEADER_BYTES}-byte cap"
        )
    total: int = align(FRAME_PREFIX_SIZE + header_len) + blob_len
    if total > max_bytes:
        raise MessageTooLargeError(
            f"declared message of {total} bytes is above the {max_bytes}-byte cap"
        )
    return total


def decode(
    data: bytes | bytearray | memoryview, *, max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> Message:
    """Decode one whole frame.

    Zero-copy: each tensor is a read-only ``np.frombuffer`` view over ``data``, which it
    keeps alive. Every byte string either decodes or raises :class:`WireError`.

    Raises:
        TypeError: ``data`` is not bytes, bytearray or memoryview.
        WireError: anything malformed: a wrong magic or version, a frame shorter or longer
            than it declares, non-zero padding, a header that is not strict msgpack (ext
            types, non-str or duplicate map keys, nesting too deep) or not a map of exactly
            the expected fields and types, an unknown message type, or a tensor table entry
            with an unknown dtype, a bad shape, a size that does not match its shape, an
            unaligned, out-of-blob or overlapping offset; or a bool tensor whose bytes are
            not all 0 or 1.
        MessageTooLargeError: the declared size is above the caps (as :func:`frame_size`).
    """
    view = _byte_view(data)
    total = frame_size(view, max_bytes=max_bytes)
    if len(view) < total:
        raise WireError(f"truncated frame: {len(view)} bytes of a declared {total}")
    if len(view) > total:
        raise WireError(f"{len(view) - total} trailing bytes after a {total}-byte frame")
    _, _, header_len, blob_len = _PREFIX.unpack_from(view)
    header_end = FRAME_PREFIX_SIZE + header_len
    blob_start = align(header_end)
    if any(view[header_end:blob_start]):
        raise WireError("non-zero padding after the header")
    header = unpack_header(view[FRAME_PREFIX_SIZE:header_end])
    if type(header) is not dict:
        raise WireError(f"the header must be a map, not {type_name(header)}")
    if header.keys() != HEADER_KEYS:
        missing = sorted(HEADER_KEYS - header.keys())
        unknown = sorted(key[:64] for key in header.keys() - HEADER_KEYS)
        raise WireError(f"header fields: missing {missing}, unknown {unknown}")
    message_type = check_message_type(header["type"])
    sender = check_identity("sender", header["sender"])
    recipient = check_identity("recipient", header["recipient"])
    task_id = check_identity("task_id", header["task_id"])
    sequence = check_sequence(header["sequence"])
    timestamp = check_timestamp(header["timestamp"])
    check_body(header["body"])
    entries = read_tensor_table(header["tensors"], blob_len)
    check_layout(view, blob_start, blob_len, entries)
    tensors: dict[str, npt.NDArray[Any]] = {}
    for entry in entries:
        start = blob_start + entry.offset
        if entry.dtype.kind == "b":
            raw = np.frombuffer(view, dtype=np.uint8, count=entry.size, offset=start)
            if not bools_are_valid(raw):
                raise WireError(f"bool tensor {entry.name!r} holds bytes other than 0 and 1")
        array = np.frombuffer(view, dtype=entry.dtype, count=entry.size, offset=start)
        try:
            array = array.reshape(entry.shape)
        except ValueError as exc:  # read_tensor_table should have refused it already
            raise WireError(f"tensor {entry.name!r} cannot take its shape") from exc
        array.flags.writeable = False
        tensors[entry.name] = array
    return Message(
        type=message_type,
        sender=sender,
        recipient=recipient,
        task_id=task_id,
        sequence=sequence,
        timestamp=timestamp,
        body=header["body"],
        tensors=tensors,
    )


def _byte_view(data: object) -> memoryview:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"expected bytes, bytearray or memoryview, not {type_name(data)}")
    try:
        return memoryview(data).cast("B")
    except (TypeError, ValueError) as exc:  # a non-contiguous or released memoryview
        raise WireError(f"the buffer cannot be read as contiguous bytes: {exc}") from exc
