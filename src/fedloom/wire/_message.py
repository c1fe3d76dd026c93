"""The in-memory form of a fedloom message: an envelope, a msgpack-able body and tensors."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

Body: TypeAlias = bool | int | float | str | bytes | Sequence["Body"] | Mapping[str, "Body"] | None
"""A JSON-like value that msgpack can carry: the payload of a message besides its tensors.

Decoded bodies hold ``list`` and ``dict``; the covariant ``Sequence``/``Mapping`` here
let senders pass e.g. a ``dict[str, str]`` without a cast."""


class MessageType(StrEnum):
    """The closed set of message types; each value equals its name."""

    JOB_REQUEST = "JOB_REQUEST"
    JOB_ACCEPT = "JOB_ACCEPT"
    JOB_REJECT = "JOB_REJECT"
    TASK_START = "TASK_START"
    TASK_COMPLETE = "TASK_COMPLETE"
    TASK_ABORT = "TASK_ABORT"
    NUM_BATCHES = "NUM_BATCHES"
    CURRENT_BATCH_ID = "CURRENT_BATCH_ID"
    EVALUATION_RESULTS = "EVALUATION_RESULTS"
    TRAINING_UPDATE = "TRAINING_UPDATE"
    BATCHES_COMPLETE = "BATCHES_COMPLETE"
    PREPARING_DATA = "PREPARING_DATA"
    CONFIGURING_TASK = "CONFIGURING_TASK"
    TASK_CANCEL = "TASK_CANCEL"
    ONLINE_CHECK = "ONLINE_CHECK"
    HEARTBEAT = "HEARTBEAT"
    PROGRESS = "PROGRESS"
    ERROR = "ERROR"
    MODEL_PARAMETERS = "MODEL_PARAMETERS"
    """Modeller to worker: global parameters, or a round's instruction."""
    INSTRUCTION = "INSTRUCTION"
    """Modeller to worker: a protocol step with a body (for example histogram edges)."""
    RESULTS = "RESULTS"
    """Worker to modeller: the results of an analytics or results-only task."""


@dataclass(frozen=True, eq=False, repr=False)
class Message:
    """One fedloom message.

    ``body`` is a JSON-like value (see :data:`Body`); any sequence (a tuple, say) or mapping
    is accepted when encoding and comes back as a list or a dict. ``tensors`` maps names to
    numpy arrays that travel as raw buffers.
    A decoded message's tensors are read-only views over the received frame, so they keep
    that frame alive; copy a tensor (``np.array(t)``) to own it.

    Equality is structural: the envelope, the body (NaN equals NaN, lists equal tuples, a
    bool never equals an int) and the tensors (same names, dtype up to byte order, shape and
    values, NaN equal to NaN). Messages are not hashable.
    """

    type: MessageType
    sender: str
    recipient: str
    task_id: str
    sequence: int = 0
    timestamp: float = 0.0
    body: Body = None
    tensors: Mapping[str, npt.NDArray[Any]] = field(default_factory=dict)

    __hash__ = None  # type: ignore[assignment]  # equality is structural over mutable parts

    def with_updates(self, **changes: Any) -> Message:
        """A copy of this message with the given fields replaced.

        Raises:
            TypeError: a name in ``changes`` is not a field of :class:`Message`.
        """
        return dataclasses.replace(self, **changes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (
            self.type == other.type
            and self.sender == other.sender
            and self.recipient == other.recipient
            and self.task_id == other.task_id
            and self.sequence == other.sequence
            and _same_number(self.timestamp, other.timestamp)
            and _body_equal(self.body, other.body)
            and _tensors_equal(self.tensors, other.tensors)
        )

    def __repr__(self) -> str:
        tensors = ", ".join(
            f"{name!r}: {_describe_array(array)}" for name, array in self.tensors.items()
        )
        return (
            f"Message(type={self.type!r}, sender={self.sender!r}, "
            f"recipient={self.recipient!r}, task_id={self.task_id!r}, "
            f"sequence={self.sequence!r}, timestamp={self.timestamp!r}, "
            f"body={self.body!r}, tensors={{{tensors}}})"
        )


def _describe_array(array: object) -> str:
    if isinstance(array, np.ndarray):
        return f"{array.dtype.name}{list(array.shape)}"
    return repr(array)


def _same_number(a: float, b: float) -> bool:
    try:
        return a == b or (math.isnan(a) and math.isnan(b))
    except TypeError:
        return False


def _kind(value: object) -> str:
    """The msgpack kind of a body value (bool is not int; any sequence is an array)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, bytes | bytearray | memoryview):
        return "bin"
    if isinstance(value, Mapping):
        return "map"
    if isinstance(value, Sequence):
        return "array"
    return type(value).__qualname__


def _body_equal(left: object, right: object) -> bool:
    """Whether two bodies are equal as msgpack values (NaN equals NaN; iterative)."""
    pending: list[tuple[object, object]] = [(left, right)]
    while pending:
        a, b = pending.pop()
        kind = _kind(a)
        if kind != _kind(b):
            return False
        if kind == "float":
            assert isinstance(a, float) and isinstance(b, float)
            if not (a == b or (math.isnan(a) and math.isnan(b))):
                return False
        elif kind == "array":
            assert isinstance(a, Sequence) and isinstance(b, Sequence)
            if len(a) != len(b):
                return False
            pending.extend(zip(a, b, strict=True))
        elif kind == "map":
            assert isinstance(a, Mapping) and isinstance(b, Mapping)
            if a.keys() != b.keys():
                return False
            pending.extend((a[key], b[key]) for key in a)
        elif a != b:
            return False
    return True


def _tensors_equal(
    left: Mapping[str, npt.NDArray[Any]], right: Mapping[str, npt.NDArray[Any]]
) -> bool:
    """Whether two tensor maps hold the same names, dtypes (up to byte order), shapes, values."""
    if left.keys() != right.keys():
        return False
    for name, a in left.items():
        b = right[name]
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return False
        if a.dtype.newbyteorder("<") != b.dtype.newbyteorder("<") or a.shape != b.shape:
            return False
        equal_nan = a.dtype.kind in "fc"
        if not np.array_equal(a, b, equal_nan=equal_nan):
            return False
    return True
