"""Round-trip properties and one test per kind of malformed frame for ``fedloom.wire``."""

from __future__ import annotations

import math
import struct
import tracemalloc
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fedloom.wire
from fedloom.errors import MessageTooLargeError, WireError
from fedloom.wire import (
    ALLOWED_DTYPES,
    DEFAULT_MAX_MESSAGE_BYTES,
    FRAME_PREFIX_SIZE,
    Message,
    MessageType,
    decode,
    encode,
    frame_size,
)

PREFIX = struct.Struct("<3sBIQ")
GIB = 1 << 30


# --- helpers ----------------------------------------------------------------------------


def sample_message(**changes: Any) -> Message:
    message = Message(
        type=MessageType.TRAINING_UPDATE,
        sender="pod-1",
        recipient="modeller",
        task_id="task-42",
        sequence=7,
        timestamp=1_700_000_000.25,
        body={"round": 3, "metrics": {"loss": 0.5}, "tags": ["a", "b"], "raw": b"\x00\x01"},
        tensors={
            "a": np.arange(12, dtype=np.float32).reshape(3, 4),  # 48 bytes at offset 0
            "b": np.arange(5, dtype=np.int64),  # 40 bytes at offset 64
        },
    )
    return message.with_updates(**changes)


def split(frame: bytes) -> tuple[dict[str, Any], bytes]:
    """The header map and the blob of a frame (the test's own reading of the format)."""
    _, _, header_len, blob_len = PREFIX.unpack_from(frame)
    header = msgpack.unpackb(frame[16 : 16 + header_len], raw=False)
    return header, frame[len(frame) - blob_len :]


def build(
    header: object = None,
    blob: bytes = b"",
    *,
    packed: bytes | None = None,
    magic: bytes = b"FLM",
    version: int = 1,
    header_len: int | None = None,
    blob_len: int | None = None,
) -> bytes:
    """A frame around ``header`` (or pre-packed header bytes) and ``blob``."""
    raw = packed if packed is not None else msgpack.packb(header, use_bin_type=True)
    prefix = PREFIX.pack(
        magic,
        version,
        len(raw) if header_len is None else header_len,
        len(blob) if blob_len is None else blob_len,
    )
    return prefix + raw + bytes(-(16 + len(raw)) % 64) + blob


def mutated(change: Callable[[dict[str, Any]], object]) -> bytes:
    """The sample frame with its header changed in place by ``change``."""
    header, blob = split(encode(sample_message()))
    change(header)
    return build(header, blob)


def rejects(data: bytes, match: str | None = None) -> None:
    with pytest.raises(WireError, match=match):
        decode(data)


# --- strategies -------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.binary(max_size=20)
)
bodies = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)


@st.composite
def tensors(draw: st.DrawFn) -> np.ndarray[Any, Any]:
    dtype = np.dtype(draw(st.sampled_from(sorted(ALLOWED_DTYPES))))
    if dtype.itemsize > 1 and draw(st.booleans()):
        dtype = dtype.newbyteorder(">")
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    array: np.ndarray[Any, Any] = draw(hnp.arrays(dtype, shape))
    if draw(st.booleans()) and array.ndim >= 1:
        array = array[::-1]  # not contiguous in the usual sense: encode must cope
    return array


messages = st.builds(
    Message,
    type=st.sampled_from(list(MessageType)),
    sender=st.text(max_size=256),
    recipient=st.text(max_size=20),
    task_id=st.text(max_size=20),
    sequence=st.integers(min_value=0, max_value=2**64 - 1),
    timestamp=st.floats(allow_nan=False, allow_infinity=False),
    body=bodies,
    tensors=st.dictionaries(st.text(max_size=12), tensors(), max_size=4),
)


def assert_same(got: Message, want: Message) -> None:
    assert got == want
    assert list(got.tensors) == list(want.tensors)  # order is kept too
    for name, expected in want.tensors.items():
        actual = got.tensors[name]
        assert actual.dtype == expected.dtype.newbyteorder("<")
        assert actual.dtype.str in ALLOWED_DTYPES
        assert actual.shape == expected.shape
        assert np.array_equal(actual, expected, equal_nan=expected.dtype.kind in "fc")


# --- round trips ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(messages)
def test_round_trip(message: Message) -> None:
    frame = encode(message)
    assert frame_size(frame[:FRAME_PREFIX_SIZE]) == len(frame)
    decoded = decode(frame)
    assert_same(decoded, message)
    assert encode(decoded) == frame  # the encoding is canonical


@settings(max_examples=100, deadline=None)
@given(bodies)
def test_body_round_trip_keeps_kinds(body: Any) -> None:
    message = sample_message(body=body, tensors={})
    decoded = decode(encode(message))
    assert decoded == message  # bool, int and float stay apart; NaN equals NaN
    assert type(decoded.body) is type(body)


def test_nan_body_and_tensor_compare_equal() -> None:
    message = sample_message(body=[math.nan, {"x": math.nan}], tensors={"f": np.array([np.nan])})
    assert decode(encode(message)) == message


def test_equality_is_strict_about_kinds() -> None:
    assert sample_message(body=1) != sample_message(body=True)
    assert sample_message(body=1) != sample_message(body=1.0)
    assert sample_message(body=[1]) == sample_message(body=(1,))
    other = {"a": np.zeros((3, 4), np.float32), "b": np.arange(5, dtype=np.int64)}
    assert sample_message() != sample_message(tensors=other)
    assert sample_message() != sample_message(tensors={"a": other["a"].astype(np.float64)})


def test_tuples_encode_as_lists() -> None:
    assert decode(encode(sample_message(body={"shape": (2, 3)}))).body == {"shape": [2, 3]}


def test_other_mappings_and_sequences_encode_as_dicts_and_lists() -> None:
    body = MappingProxyType({"r": range(3), "t": ("x", MappingProxyType({"k": b"v"}))})
    decoded = decode(encode(sample_message(body=body))).body
    assert decoded == {"r": [0, 1, 2], "t": ["x", {"k": b"v"}]}
    assert decode(encode(sample_message(body=body))) == sample_message(body=body)


def test_str_enum_values_encode_as_str() -> None:
    decoded = decode(encode(sample_message(body={MessageType.HEARTBEAT: MessageType.ERROR})))
    assert decoded.body == {"HEARTBEAT": "ERROR"}


def test_decode_is_zero_copy_and_read_only() -> None:
    frame = encode(sample_message())
    decoded = decode(frame)
    raw = np.frombuffer(frame, dtype=np.uint8)
    for array in decoded.tensors.values():
        assert np.shares_memory(array, raw)
        assert not array.flags.writeable


def test_decode_of_bytearray_and_memoryview_is_zero_copy_and_read_only() -> None:
    buffer = bytearray(encode(sample_message()))
    for data in (buffer, memoryview(buffer)):
        array = decode(data).tensors["a"]
        assert np.shares_memory(array, np.frombuffer(buffer, dtype=np.uint8))
        with pytest.raises(ValueError, match="read-only"):
            array[0, 0] = 1.0


def test_big_endian_tensors_arrive_little_endian() -> None:
    values = np.arange(6, dtype=">f8").reshape(2, 3)
    decoded = decode(encode(sample_message(tensors={"be": values}))).tensors["be"]
    assert decoded.dtype.str == "<f8"
    assert decoded.tolist() == values.tolist()


def test_zero_dim_and_empty_tensors() -> None:
    tensors = {"scalar": np.array(3.5), "empty": np.zeros((0, 4), np.int8), "last": np.ones(3)}
    decoded = decode(encode(sample_message(tensors=tensors)))
    assert decoded.tensors["scalar"].shape == ()
    assert decoded.tensors["empty"].shape == (0, 4)
    assert decoded == sample_message(tensors=tensors)


def test_tensor_offsets_are_aligned() -> None:
    header, _ = split(encode(sample_message()))
    assert [entry["offset"] for entry in header["tensors"]] == [0, 64]
    assert (FRAME_PREFIX_SIZE + len(msgpack.packb(header))) % 64 != 0  # padding is exercised


def test_builder_matches_encoder() -> None:
    frame = encode(sample_message())
    assert build(*split(frame)) == frame


def test_public_names() -> None:
    assert fedloom.wire.__all__ == sorted(fedloom.wire.__all__)
    assert set(fedloom.wire.__all__) == {
        "ALLOWED_DTYPES",
        "Body",
        "DEFAULT_MAX_MESSAGE_BYTES",
        "FRAME_PREFIX_SIZE",
        "Message",
        "MessageType",
        "decode",
        "encode",
        "frame_size",
    }
    assert DEFAULT_MAX_MESSAGE_BYTES == 2 * GIB
    assert all(member.value == member.name for member in MessageType)


def test_repr_summarises_tensors() -> None:
    text = repr(sample_message())
    assert "'a': float32[3, 4]" in text
    assert "0., 1." not in text


def test_messages_are_not_hashable() -> None:
    with pytest.raises(TypeError):
        hash(sample_message())


# --- malformed frames: one test per kind ------------------------------------------------


def test_truncated_frames_are_refused() -> None:
    frame = encode(sample_message())
    for cut in range(len(frame)):
        rejects(frame[:cut])


def test_truncated_frame_says_so() -> None:
    rejects(encode(sample_message())[:-1], match="truncated")


def test_trailing_bytes_are_refused() -> None:
    frame = encode(sample_message())
    rejects(frame + b"\x00", match="trailing")
    rejects(frame + frame, match="trailing")


def test_wrong_magic_is_refused() -> None:
    frame = b"FLX" + encode(sample_message())[3:]
    rejects(frame, match="magic")
    with pytest.raises(WireError, match="magic"):
        frame_size(frame[:FRAME_PREFIX_SIZE])


def test_wrong_version_is_refused() -> None:
    frame = bytearray(encode(sample_message()))
    for version in (0, 2, 255):
        frame[3] = version
        rejects(bytes(frame), match="version")


def test_short_prefix_is_refused() -> None:
    with pytest.raises(WireError, match="prefix"):
        frame_size(b"FLM\x01")


def test_non_zero_padding_is_refused() -> None:
    frame = bytearray(encode(sample_message()))
    _, _, header_len, _ = PREFIX.unpack_from(frame)
    frame[FRAME_PREFIX_SIZE + header_len] = 1
    rejects(bytes(frame), match="padding")


def test_non_zero_gap_between_tensors_is_refused() -> None:
    frame = bytearray(encode(sample_message()))
    _, blob = split(bytes(frame))
    frame[len(frame) - len(blob) + 50] = 1  # between "a" (0..48) and "b" (64..104)
    rejects(bytes(frame), match="padding")


@pytest.mark.parametrize(
    ("offset", "match"),
    [
        (128, "past the end"),  # beyond the blob
        (65, "aligned"),
        (-64, "non-negative"),
        (2**64 - 64, "past the end"),
        ("64", "non-negative ints"),
        (True, "non-negative ints"),
    ],
)
def test_lying_offset_is_refused(offset: object, match: str) -> None:
    def change(header: dict[str, Any]) -> None:
        header["tensors"][1]["offset"] = offset

    rejects(mutated(change), match=match)


def test_offset_leaving_unused_blob_bytes_is_refused() -> None:
    header, blob = split(encode(sample_message()))
    header["tensors"][1]["offset"] = 128
    rejects(build(header, blob + bytes(64)), match="unused bytes")


def test_blob_longer_than_its_tensors_is_refused() -> None:
    header, blob = split(encode(sample_message()))
    rejects(build(header, blob + bytes(8)), match="tensors end at")


@pytest.mark.parametrize(
    ("shape", "match"),
    [
        ([3, 5], "does not match"),  # 60 bytes declared as 48
        ([48], "does not match"),
        ([3, -4], "non-negative"),
        ([3, 4.0], "non-negative ints"),
        ((3, 4), None),  # msgpack has no tuple; a list is what arrives, so this one decodes
        ("3x4", "list"),
        ([1] * 33, "list of <= 32"),
        ([2**63, 0], "too large"),
        ([2**61, 4, 0], "too large"),
        ([2**64 - 1, 2**64 - 1], "too large"),
    ],
)
def test_lying_shape_is_refused(shape: object, match: str | None) -> None:
    def change(header: dict[str, Any]) -> None:
        header["tensors"][0]["shape"] = shape

    if match is None:
        assert decode(mutated(change)).tensors["a"].shape == (3, 4)
    else:
        rejects(mutated(change), match=match)


def test_shape_and_nbytes_that_agree_but_run_into_the_next_tensor_are_refused() -> None:
    def change(header: dict[str, Any]) -> None:
        header["tensors"][0]["shape"] = [3, 6]
        header["tensors"][0]["nbytes"] = 72  # "b" starts at 64

    rejects(mutated(change), match="overlaps")


def test_overlapping_tensors_are_refused() -> None:
    def change(header: dict[str, Any]) -> None:
        header["tensors"][1]["offset"] = 0
        header["tensors"][1]["shape"] = [13]
        header["tensors"][1]["nbytes"] = 104

    rejects(mutated(change), match="overlaps")


def test_duplicate_tensor_names_are_refused() -> None:
    def change(header: dict[str, Any]) -> None:
        header["tensors"][1]["name"] = "a"

    rejects(mutated(change), match="duplicate tensor name")


@pytest.mark.parametrize("dtype", ["<f16", "|V8", "<M8[s]", "<U2", ">f4", "float32", "", 4])
def test_unknown_dtype_is_refused(dtype: object) -> None:
    def change(header: dict[str, Any]) -> None:
        header["tensors"][0]["dtype"] = dtype

    rejects(mutated(change), match="dtype")


def test_object_dtype_is_refused_in_a_frame() -> None:
    def change(header: dict[str, Any]) -> None:
        header["tensors"][1]["dtype"] = "|O"

    rejects(mutated(change), match="dtype")


@pytest.mark.parametrize(
    "array",
    [
        np.array([object(), None], dtype=object),
        np.zeros(2, dtype=[("x", "<f4"), ("y", "<i4")]),
        np.array(["ab", "c"]),
        np.array([b"ab"]),
        np.array(["2024-01-01"], dtype="datetime64[D]"),
        np.zeros(2, dtype=np.float128) if hasattr(np, "float128") else np.zeros(2, "V4"),
    ],
    ids=["object", "structured", "unicode", "bytes", "datetime", "longdouble"],
)
def test_disallowed_dtypes_are_refused_at_encode(array: np.ndarray[Any, Any]) -> None:
    with pytest.raises(WireError, match="may not travel"):
        encode(sample_message(tensors={"x": array}))


def test_header_that_is_not_a_map_is_refused() -> None:
    for header in ([1, 2, 3], "header", 7, None, b"\x00"):
        rejects(build(header), match="must be a map")


def test_missing_and_unknown_header_fields_are_refused() -> None:
    rejects(mutated(lambda header: header.pop("body")), match="missing \\['body'\\]")
    rejects(mutated(lambda header: header.update(extra=1)), match="unknown \\['extra'\\]")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("type", 3, "message type must be a str"),
        ("type", b"HEARTBEAT", "message type must be a str"),
        ("sender", b"pod-1", "sender must be a str"),
        ("sender", None, "sender must be a str"),
        ("recipient", "x" * 257, "recipient is longer than 256"),
        ("task_id", ["t"], "task_id must be a str"),
        ("sequence", -1, "non-negative"),
        ("sequence", True, "sequence must be an int"),
        ("sequence", 1.0, "sequence must be an int"),
        ("timestamp", "now", "timestamp must be a float"),
        ("timestamp", False, "timestamp must be a float"),
        ("timestamp", math.nan, "finite"),
        ("timestamp", -math.inf, "finite"),
        ("tensors", {"a": 1}, "tensor table must be a list"),
        ("tensors", [1], "tensor table entry"),
        ("tensors", [{"name": "a"}], "tensor table entry"),
    ],
)
def test_wrong_field_types_are_refused(field: str, value: object, match: str) -> None:
    rejects(mutated(lambda header: header.update({field: value})), match=match)


def test_int_timestamp_is_accepted_as_float() -> None:
    decoded = decode(mutated(lambda header: header.update(timestamp=12)))
    assert decoded.timestamp == 12.0
    assert type(decoded.timestamp) is float


def test_wrong_tensor_name_type_is_refused() -> None:
    def change(header: dict[str, Any]) -> None:
        header["tensors"][0]["name"] = 5

    rejects(mutated(change), match="tensor names must be str")


def test_unknown_message_type_is_refused() -> None:
    rejects(mutated(lambda header: header.update(type="NOT_A_TYPE")), match="unknown message")
    rejects(mutated(lambda header: header.update(type="heartbeat")), match="unknown message")


def test_invalid_bool_bytes_are_refused() -> None:
    message = sample_message(tensors={"mask": np.array([True, False, True])})
    frame = bytearray(encode(message))
    frame[-1] = 2
    rejects(bytes(frame), match="bool")
    with pytest.raises(WireError, match="bool"):
        encode(sample_message(tensors={"mask": np.array([0, 2], np.uint8).view(np.bool_)}))


def test_msgpack_extension_types_are_refused() -> None:
    header, blob = split(encode(sample_message()))
    for ext in (msgpack.ExtType(5, b"xyz"), msgpack.Timestamp(1, 0)):
        header["body"] = {"when": ext}
        rejects(build(header, blob), match="msgpack")


def test_zero_length_extension_is_refused() -> None:
    for code in (b"\x05", b"\xff"):  # an arbitrary code, and -1 (timestamp)
        packed = msgpack.packb({"body": None})[:-1] + b"\xc7\x00" + code  # {"body": ext8()}
        rejects(build(packed=packed), match="msgpack|extension")


def test_header_with_trailing_msgpack_is_refused() -> None:
    header, blob = split(encode(sample_message()))
    rejects(build(packed=msgpack.packb(header) + b"\xc0", blob=blob), match="msgpack")


def test_duplicate_map_keys_are_refused() -> None:
    header, blob = split(encode(sample_message()))
    packer = msgpack.Packer()
    packed = packer.pack_map_header(len(header) + 1)
    for key, value in [*header.items(), ("type", "HEARTBEAT")]:
        packed += packer.pack(key) + packer.pack(value)
    assert len(msgpack.unpackb(packed)) == len(header)  # plain msgpack silently keeps one
    rejects(build(packed=packed, blob=blob), match="duplicate map key")


@pytest.mark.parametrize("body", [{1: "x"}, {b"k": "x"}, {None: 1}, {1.5: 2}])
def test_non_str_map_keys_are_refused(body: Any) -> None:
    packed = msgpack.packb(body, strict_types=False)
    header, blob = split(encode(sample_message()))
    header["body"] = None
    frame = build(header, blob)
    # splice the raw body in place of the nil that encodes ``body: None``
    header_len = PREFIX.unpack_from(frame)[2]
    raw = frame[16 : 16 + header_len]
    marker = msgpack.packb("body") + b"\xc0"
    assert raw.count(marker) == 1
    rejects(build(packed=raw.replace(marker, msgpack.packb("body") + packed), blob=blob))
    with pytest.raises(WireError, match="keys must be str"):
        encode(sample_message(body=body))


def test_invalid_utf8_is_refused() -> None:
    header, blob = split(encode(sample_message()))
    header["sender"] = "POD"
    raw = msgpack.packb(header).replace(b"\xa3POD", b"\xa3\xff\xfe\xfd")
    rejects(build(packed=raw, blob=blob), match="msgpack")


@pytest.mark.parametrize("depth", [65, 200, 5_000, 100_000])
def test_deeply_nested_bodies_are_refused(depth: int) -> None:
    header, blob = split(encode(sample_message()))
    raw = msgpack.packb(header)
    marker = msgpack.packb("body") + msgpack.packb(header["body"])
    nested = b"\x91" * depth + b"\xc0"  # [[[...[nil]...]]]
    rejects(build(packed=raw.replace(marker, msgpack.packb("body") + nested), blob=blob))


def test_nesting_up_to_the_limit_is_accepted() -> None:
    body: Any = None
    for _ in range(64):
        body = [body]
    assert decode(encode(sample_message(body=body))).body == body
    with pytest.raises(WireError, match="deeper than 64"):
        encode(sample_message(body=[body]))


# --- size caps ---------------------------------------------------------------------------


def test_oversized_frame_is_refused_from_the_prefix_alone() -> None:
    prefix = PREFIX.pack(b"FLM", 1, 100, 10 * GIB)  # declares a 10 GiB frame
    tracemalloc.start()
    try:
        with pytest.raises(MessageTooLargeError):
            frame_size(prefix)
        with pytest.raises(MessageTooLargeError):
            decode(prefix)  # refused as too large before it could be called truncated
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert frame_size(prefix, max_bytes=11 * GIB) == 128 + 10 * GIB  # only the prefix is read


def test_frame_size_reads_only_the_prefix() -> None:
    frame = encode(sample_message())
    assert frame_size(frame[:FRAME_PREFIX_SIZE]) == len(frame)
    assert frame_size(memoryview(frame)) == len(frame)


def test_oversized_header_is_refused() -> None:
    with pytest.raises(MessageTooLargeError, match="header"):
        frame_size(PREFIX.pack(b"FLM", 1, (64 << 20) + 1, 0), max_bytes=GIB)
    with pytest.raises(MessageTooLargeError, match="header"):
        encode(sample_message(body="x" * (64 << 20)), max_bytes=GIB)


def test_encode_over_max_bytes_is_refused() -> None:
    message = sample_message(tensors={"w": np.zeros(1024, np.float32)})
    size = len(encode(message))
    assert decode(encode(message, max_bytes=size), max_bytes=size) == message
    with pytest.raises(MessageTooLargeError):
        encode(message, max_bytes=size - 1)
    with pytest.raises(MessageTooLargeError):
        decode(encode(message), max_bytes=size - 1)


# --- encode-side validation --------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        {1, 2},
        object(),
        np.int64(3),
        np.zeros(2),
        2**64,
        -(2**63) - 1,
        "\ud800",
        {"k": [1, {"deep": object()}]},
    ],
    ids=["set", "object", "np-int", "ndarray", "too-big", "too-small", "surrogate", "nested"],
)
def test_bodies_msgpack_cannot_carry_are_refused(body: object) -> None:
    with pytest.raises(WireError):
        encode(sample_message(body=body))


def test_self_referencing_body_is_refused() -> None:
    loop: list[Any] = []
    loop.extend([loop, loop])
    with pytest.raises(WireError, match="deeper"):
        encode(sample_message(body=loop))


def test_shared_subtrees_are_fine() -> None:
    shared = {"x": [1, 2]}
    message = sample_message(body=[shared, shared, {"again": shared}])
    assert decode(encode(message)) == message


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"tensors": {"x": [1.0, 2.0]}}, "numpy array"),
        ({"tensors": {"x": np.float32(1.0)}}, "numpy array"),
        ({"tensors": {"x": np.ma.masked_array([1.0], mask=[True])}}, "numpy array"),
        ({"tensors": {1: np.zeros(1)}}, "names must be str"),
        ({"tensors": [("x", np.zeros(1))]}, "mapping"),
        ({"type": "NOPE"}, "unknown message type"),
        ({"type": 1}, "must be a str"),
        ({"sender": None}, "sender"),
        ({"task_id": "t" * 257}, "task_id"),
        ({"sequence": -1}, "non-negative"),
        ({"sequence": 2**64}, "non-negative"),
        ({"timestamp": math.inf}, "finite"),
        ({"timestamp": 10**400}, "range"),
    ],
)
def test_invalid_messages_are_refused_at_encode(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(WireError, match=match):
        encode(sample_message(**changes))


def test_str_message_type_is_accepted_at_encode() -> None:
    decoded = decode(encode(sample_message(type="HEARTBEAT")))
    assert decoded.type is MessageType.HEARTBEAT


def test_non_bytes_input_is_a_type_error() -> None:
    with pytest.raises(TypeError):
        decode("FLM")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode({"type": "HEARTBEAT"})  # type: ignore[arg-type]


def test_non_contiguous_memoryview_is_refused() -> None:
    frame = encode(sample_message())
    rejects(memoryview(frame + frame)[::2])
