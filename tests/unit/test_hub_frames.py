"""Hub stream frames: parsing, field checks, chunking, reassembly, error transport."""

from __future__ import annotations

import msgpack
import pytest

from fedloom.errors import (
    BadSignatureError,
    KeyFileError,
    MessageTooLargeError,
    ProtocolError,
    UnknownRecipientError,
)
from fedloom.transport import _frames as frames
from fedloom.transport._frames import Kind


def test_control_round_trip_and_field_checks() -> None:
    item = frames.control(Kind.SEND_START, {"ref": 3, "size": 10, "signature": b"s"})
    kind, payload = frames.parse(item)
    assert kind is Kind.SEND_START
    fields = frames.fields_of(kind, payload, {"ref": int, "size": int, "signature": bytes})
    assert fields == {"ref": 3, "size": 10, "signature": b"s"}
    with pytest.raises(ProtocolError, match="'ref'"):
        frames.fields_of(kind, payload, {"ref": str})
    flagged = frames.control(Kind.ACK, {"id": True})
    with pytest.raises(ProtocolError, match="'id'"):  # a bool is not an id
        frames.fields_of(*frames.parse(flagged), {"id": int})


@pytest.mark.parametrize(
    "item",
    [
        b"",
        "text",
        b"\x00abc",
        b"\x7f",
        bytes([Kind.ACK]) + b"\xc1",  # never-used msgpack byte
        bytes([Kind.ACK]) + msgpack.packb([1, 2]),  # not a map
        bytes([Kind.ACK]) + msgpack.packb({1: 2}),  # non-str key
        bytes([Kind.ACK]) + b"\x91" * 5000 + b"\xc0",  # nesting
        bytes([Kind.ACK]) + b"x" * (frames.MAX_CONTROL_BYTES + 1),
        bytes([Kind.SEND_DATA]) + b"data is not a control frame",
    ],
)
def test_malformed_items_are_protocol_errors(item: object) -> None:
    with pytest.raises(ProtocolError):
        kind, payload = frames.parse(item)
        frames.fields_of(kind, payload, {"id": int})


def test_chunks_and_reassembly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(frames, "CHUNK_BYTES", 4)
    message = bytes(range(10))
    items = list(frames.chunks(Kind.SEND_DATA, message))
    assert [len(item) for item in items] == [5, 5, 3]
    assert all(item[0] == Kind.SEND_DATA for item in items)
    whole = frames.Reassembly(len(message), 100, {"ref": 1})
    with pytest.raises(ProtocolError):
        _ = whole.frame  # not complete yet
    done = [whole.add(frames.parse(item)[1]) for item in items]
    assert done == [False, False, True] and whole.frame == message
    assert list(frames.chunks(Kind.SEND_DATA, b"")) == [bytes([Kind.SEND_DATA])]


def test_reassembly_refuses_oversized_and_overflowing_messages() -> None:
    with pytest.raises(MessageTooLargeError):
        frames.Reassembly(101, 100, {})
    with pytest.raises(ProtocolError):
        frames.Reassembly(-1, 100, {})
    small = frames.Reassembly(3, 100, {})
    with pytest.raises(ProtocolError, match="more bytes"):
        small.add(memoryview(b"four"))


def test_errors_travel_by_code_with_their_public_text() -> None:
    for error in (UnknownRecipientError("x"), BadSignatureError("y")):
        fields = frames.error_fields(error)
        assert fields == {"code": error.code, "message": error.public_text()}
        rebuilt = frames.error_from_fields(fields)
        assert type(rebuilt) is type(error) and str(error) in str(rebuilt)


def test_a_private_message_never_travels() -> None:
    secret = KeyFileError("/home/pod/keys/pod.key is unreadable")
    fields = frames.error_fields(secret)
    assert "/home" not in str(fields) and "KeyFileError" not in str(fields)
    assert type(frames.error_from_fields(fields)) is KeyFileError


@pytest.mark.parametrize("code", [99999, "9000", True, None])
def test_an_unknown_or_malformed_code_is_a_protocol_error_naming_it(code: object) -> None:
    unknown = frames.error_from_fields({"code": code, "message": "no"})
    assert type(unknown) is ProtocolError
    assert repr(code) in str(unknown) and "no" in str(unknown)


def test_a_malformed_message_field_never_raises() -> None:
    rebuilt = frames.error_from_fields({"code": ProtocolError.code, "message": b"\xff"})
    assert type(rebuilt) is ProtocolError and str(rebuilt) == "hub: "
