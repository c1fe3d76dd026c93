"""End-to-end sealing and frame signatures (fedloom.crypto._sealing)."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.crypto import Identity, PublicIdentity
from fedloom.crypto._sealing import SEALED_TENSOR, Sealer, sign_frame, verify_frame
from fedloom.errors import (
    BadSignatureError,
    ConfigError,
    DecryptionError,
    UnknownRecipientError,
)
from fedloom.wire import Message, MessageType, encode

MARKER = b"PATIENT-RECORD-MARKER-7f3a"


def _directory(*identities: Identity):  # type: ignore[no-untyped-def]
    table = {identity.name: identity.public() for identity in identities}

    async def lookup(name: str) -> PublicIdentity:
        if name not in table:
            raise UnknownRecipientError(name)
        return table[name]

    return lookup


@pytest.fixture
def parties() -> tuple[Sealer, Sealer]:
    alice, bob = Identity.generate("alice"), Identity.generate("bob")
    lookup = _directory(alice, bob)
    return Sealer(alice, lookup), Sealer(bob, lookup)


def _message(sender: str = "alice", recipient: str = "bob", task: str = "t1") -> Message:
    return Message(
        MessageType.MODEL_PARAMETERS,
        sender,
        recipient,
        task,
        sequence=7,
        timestamp=1234.5,
        body={"note": MARKER.decode(), "round": 1},
        tensors={"w": np.frombuffer(MARKER * 4, dtype=np.uint8).copy()},
    )


async def _seal(sealer: Sealer, message: Message) -> Message:
    await sealer.prepare(message)
    return sealer.seal(message)


async def test_round_trip_and_marker_never_in_sealed_frame(parties: tuple[Sealer, Sealer]) -> None:
    alice, bob = parties
    message = _message()
    sealed = await _seal(alice, message)
    frame = encode(sealed)
    assert MARKER not in frame
    assert set(sealed.tensors) == {SEALED_TENSOR}
    assert (sealed.type, sealed.sender, sealed.recipient, sealed.task_id, sealed.sequence) == (
        message.type,
        "alice",
        "bob",
        "t1",
        7,
    )
    assert bob.open(sealed) == message


async def test_one_key_per_task_both_ways(parties: tuple[Sealer, Sealer]) -> None:
    alice, bob = parties
    bob.open(await _seal(alice, _message()))
    key = alice.task_key("t1")
    assert key is not None and bob.task_key("t1") == key
    reply = await _seal(bob, _message("bob", "alice"))
    assert alice.open(reply).sender == "bob"
    assert alice.task_key("t1") == key, "the reply must use the task's key, not a new one"
    assert alice.task_key("t2") is None
    await _seal(alice, _message(task="t2"))
    assert alice.task_key("t2") not in (None, key)


async def test_tampered_ciphertext_is_refused(parties: tuple[Sealer, Sealer]) -> None:
    alice, bob = parties
    sealed = await _seal(alice, _message())
    tampered = sealed.tensors[SEALED_TENSOR].copy()
    tampered[len(tampered) // 2] ^= 1
    with pytest.raises(DecryptionError):
        bob.open(sealed.with_updates(tensors={SEALED_TENSOR: tampered}))


@pytest.mark.parametrize(
    "change",
    [
        {"sequence": 8},
        {"timestamp": 1234.6},
        {"task_id": "t9"},
        {"type": MessageType.TASK_ABORT},
        {"recipient": "carol"},
    ],
)
async def test_rerouted_or_relabelled_envelope_is_refused(
    parties: tuple[Sealer, Sealer], change: dict[str, object]
) -> None:
    alice, bob = parties
    sealed = await _seal(alice, _message())
    with pytest.raises(DecryptionError):
        bob.open(sealed.with_updates(**change))


async def test_someone_else_cannot_open(parties: tuple[Sealer, Sealer]) -> None:
    alice, _ = parties
    carol_identity = Identity.generate("bob")  # same name, other keys
    carol = Sealer(carol_identity, _directory(carol_identity))
    with pytest.raises(DecryptionError):
        carol.open(await _seal(alice, _message()))


@pytest.mark.parametrize(
    "sealed",
    [
        _message(),  # plaintext, not sealed at all
        _message().with_updates(body={"key": "not bytes"}),
        _message().with_updates(body=None, tensors={}),
    ],
)
def test_unsealed_messages_are_refused(parties: tuple[Sealer, Sealer], sealed: Message) -> None:
    _, bob = parties
    with pytest.raises(DecryptionError):
        bob.open(sealed)


async def test_seal_needs_prepare_and_a_known_recipient(parties: tuple[Sealer, Sealer]) -> None:
    alice, _ = parties
    with pytest.raises(ConfigError):
        alice.seal(_message())
    with pytest.raises(UnknownRecipientError):
        await alice.prepare(_message(recipient="nobody"))


def test_frame_signatures() -> None:
    alice = Identity.generate("alice")
    frame = encode(_message())
    signature = sign_frame(alice, frame)
    verify_frame(alice.public(), frame, signature)
    verify_frame(alice.public(), memoryview(frame), signature)
    altered = bytearray(frame)
    altered[-1] ^= 1
    with pytest.raises(BadSignatureError):
        verify_frame(alice.public(), altered, signature)
    with pytest.raises(BadSignatureError):
        verify_frame(Identity.generate("alice").public(), frame, signature)
