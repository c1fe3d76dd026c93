"""Limits and validators shared by the encoder and the decoder.

Both directions run the same checks, so that whatever :func:`fedloom.wire.encode` accepts,
:func:`fedloom.wire.decode` accepts too, and the other way round.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np

from fedloom.errors import WireError
from fedloom.wire._message import MessageType

ALIGNMENT: Final = 64
"""Each tensor starts at a multiple of this many bytes from the start of the blob."""
MAX_IDENTITY_CHARS: Final = 256
"""Longest sender, recipient or task id."""
MAX_TENSOR_NAME_CHARS: Final = 1024
MAX_TENSOR_NDIM: Final = 32
MAX_BODY_DEPTH: Final = 64
"""Deepest nesting of lists and maps in a body (a scalar body has depth 0)."""

_MIN_INT: Final = -(2**63)
_MAX_INT: Final = 2**64 - 1

ALLOWED_DTYPES: Final[frozenset[str]] = frozenset(
    {
        "|b1",
        "|i1",
        "<i2",
        "<i4",
        "<i8",
        "|u1",
        "<u2",
        "<u4",
        "<u8",
        "<f2",
        "<f4",
        "<f8",
        "<c8",
        "<c16",
    }
)
"""Tensor dtypes that may travel, as numpy ``dtype.str`` (little-endian or byte-sized)."""

DTYPES: Final[dict[str, np.dtype[np.generic]]] = {name: np.dtype(name) for name in ALLOWED_DTYPES}


def align(position: int) -> int:
    """``position`` rounded up to the next multiple of :data:`ALIGNMENT`."""
    return -(-position // ALIGNMENT) * ALIGNMENT


def type_name(value: object) -> str:
    """A short name for the type of ``value``, for error messages."""
    return type(value).__qualname__


def check_message_type(value: object) -> MessageType:
    """The :class:`MessageType` that ``value`` names.

    Raises:
        WireError: ``value`` is not a message type or the str value of one.
    """
    if not isinstance(value, str):
        raise WireError(f"message type must be a str, not {type_name(value)}")
    try:
        return MessageType(value)
    except ValueError:
        raise WireError(f"unknown message type {value[:64]!r}") from None


def check_identity(field: str, value: object) -> str:
    """``value`` when it is a str of at most :data:`MAX_IDENTITY_CHARS` characters.

    Raises:
        WireError: ``value`` is not a str, or is too long.
    """
    if not isinstance(value, str):
        raise WireError(f"{field} must be a str, not {type_name(value)}")
    if len(value) > MAX_IDENTITY_CHARS:
        raise WireError(f"{field} is longer than {MAX_IDENTITY_CHARS} characters")
    return value


def check_sequence(value: object) -> int:
    """``value`` when it is an int in ``[0, 2**64)`` (bools are refused).

    Raises:
        WireError: ``value`` is not such an int.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise WireError(f"sequence must be an int, not {type_name(value)}")
    if not 0 <= value <= _MAX_INT:
        raise WireError("sequence must be a non-negative 64-bit int")
    return int(value)


def check_timestamp(value: object) -> float:
    """``value`` as a finite float (ints are accepted, bools refused).

    Raises:
        WireError: ``value`` is not a finite number.
    """
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise WireError(f"timestamp must be a float, not {type_name(value)}")
    try:
        result = float(value)
    except OverflowError:
        raise WireError("timestamp is out of range") from None
    if not math.isfinite(result):
        raise WireError("timestamp must be finite")
    return result


def check_body(body: object) -> None:
    """Check that ``body`` is a msgpack-able :data:`~fedloom.wire.Body`.

    Iterative, so a deep or self-referencing body cannot exhaust the Python stack.

    Lists, tuples and other sequences travel as msgpack arrays; dicts and other mappings
    as msgpack maps.

    Raises:
        WireError: a value of another type, a map key that is not a str, an int outside
            msgpack's range, or nesting deeper than :data:`MAX_BODY_DEPTH`.
    """
    checked_depth: dict[int, int] = {}
    pending: list[tuple[object, int]] = [(body, 0)]
    while pending:
        value, depth = pending.pop()
        if value is None or isinstance(value, bool | float | str | bytes | bytearray):
            continue
        if isinstance(value, int):
            if not _MIN_INT <= value <= _MAX_INT:
                raise WireError("body int is outside msgpack's 64-bit range")
            continue
        if not isinstance(value, Mapping | Sequence) or isinstance(value, memoryview):
            raise WireError(f"body value of type {type_name(value)} cannot be encoded")
        if depth >= MAX_BODY_DEPTH:
            raise WireError(f"body is nested deeper than {MAX_BODY_DEPTH} levels")
        # A container already checked at this depth or deeper needs no second look; a cycle
        # is revisited ever deeper until the depth limit refuses it.
        if checked_depth.get(id(value), -1) >= depth:
            continue
        checked_depth[id(value)] = depth
        if isinstance(value, Mapping):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise WireError(f"body map keys must be str, not {type_name(key)}")
                pending.append((item, depth + 1))
        else:
            pending.extend((item, depth + 1) for item in value)


def plain_container(value: object) -> object:
    """A ``dict`` or ``list`` copy of a body container msgpack cannot pack as it is.

    Used as msgpack's ``default`` hook, after :func:`check_body` accepted the body.

    Raises:
        WireError: ``value`` is not a mapping or a sequence.
    """
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes | bytearray):
        return list(value)
    raise WireError(f"body value of type {type_name(value)} cannot be encoded")


def check_tensor_name(value: object) -> str:
    """``value`` when it is a str of at most :data:`MAX_TENSOR_NAME_CHARS` characters.

    Raises:
        WireError: ``value`` is not a str, or is too long.
    """
    if not isinstance(value, str):
        raise WireError(f"tensor names must be str, not {type_name(value)}")
    if len(value) > MAX_TENSOR_NAME_CHARS:
        raise WireError(f"tensor name is longer than {MAX_TENSOR_NAME_CHARS} characters")
    return value


def bools_are_valid(raw: np.ndarray[tuple[int, ...], np.dtype[np.uint8]]) -> bool:
    """Whether every byte of a bool tensor's buffer is 0 or 1."""
    return raw.size == 0 or int(raw.max()) <= 1
