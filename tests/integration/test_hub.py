"""The gRPC hub in this process: contract, authentication, refusals, encryption, durability."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from fedloom import errors
from fedloom.crypto import Identity
from fedloom.crypto._sealing import sign_frame
from fedloom.errors import (
    AccessDeniedError,
    BadSignatureError,
    HubUnavailableError,
    MessageTooLargeError,
    ReceiveTimeoutError,
    UnknownIdentityError,
    UnknownRecipientError,
)
from fedloom.testing import check_hub, check_mailbox
from fedloom.transport import Hub, Mailbox, Role
from fedloom.transport._frames import Kind, control
from fedloom.transport._grpc_mailbox import GrpcMailbox
from fedloom.wire import Message, MessageType, encode

from .hub_kit import GrpcTestHub, RawSession, SharedHub, connect, free_port, register, start_hub

MARKER = "SECRET-MARKER-9d1c5e"


def _message(recipient: str, task: str = "task-1", index: int = 0) -> Message:
    return Message(
        MessageType.PROGRESS, "", recipient, task, body={"marker": MARKER, "index": index}
    )


async def test_grpc_mailbox_passes_the_mailbox_contract(tmp_path: Path) -> None:
    count = 0

    async def factory() -> tuple[Mailbox, Mailbox]:
        nonlocal count
        count += 1
        data = tmp_path / f"hub{count}"
        ids = register(data, {"alice": "modeller", "bob": "pod"})
        hub = await start_hub(data)
        hubs.append(hub)
        alice = await connect(hub.port, ids["alice"])
        bob = await connect(hub.port, ids["bob"], accepts=["alice"])
        return alice, bob

    hubs: list = []  # type: ignore[type-arg]
    try:
        await check_mailbox(factory)
    finally:
        for hub in hubs:
            await hub.stop()


async def test_grpc_hub_passes_the_hub_contract(tmp_path: Path) -> None:
    """Routing rules included: the same check_hub the in-memory hub passes."""
    count = 0

    async def factory(roles: Mapping[str, Role]) -> Hub:
        nonlocal count
        count += 1
        return await GrpcTestHub.start(tmp_path / f"hub{count}", roles)

    await check_hub(factory)


async def test_marker_never_stored_or_forwarded_in_clear(tmp_path: Path) -> None:
    ids = register(tmp_path, {"alice": "modeller", "bob": "pod"})

    hub = await start_hub(tmp_path)
    try:
        alice = await connect(hub.port, ids["alice"])
        bob_raw = RawSession(hub.port)
        await bob_raw.login(ids["bob"], accepts=["alice"])
        weights = np.frombuffer((MARKER * 1000).encode(), dtype=np.uint8)
        await alice.send(_message("bob").with_updates(tensors={"w": weights}))
        # what the hub forwards, byte for byte
        forwarded = b""
        kind, start = await bob_raw.read()
        assert kind is Kind.DELIVER_START
        while len(forwarded) < start["size"]:
            item = await bob_raw.call.read()
            forwarded += item[1:]
        assert MARKER.encode() not in forwarded
        await bob_raw.close()
        await alice.close()
    finally:
        await hub.stop()
    files = [tmp_path / "hub.db", *tmp_path.glob("hub.db*"), *tmp_path.rglob("spool/*")]
    for path in files:
        if path.is_file():
            assert MARKER.encode() not in path.read_bytes(), path


async def test_unknown_identity_and_bad_challenge_are_refused(tmp_path: Path) -> None:
    ids = register(tmp_path, {"alice": "modeller", "bob": "pod"})

    hub = await start_hub(tmp_path)
    try:
        with pytest.raises(UnknownIdentityError):
            await connect(hub.port, Identity.generate("mallory"))
        with pytest.raises(BadSignatureError):  # right name, wrong key
            await connect(hub.port, Identity.generate("alice"))
        assert hub.statistics().connected == ()
        alice = await connect(hub.port, ids["alice"])
        assert hub.statistics().connected == ("alice",)
        await alice.close()
    finally:
        await hub.stop()


async def test_refusals_at_the_hub_reach_nothing(tmp_path: Path) -> None:
    ids = register(tmp_path, {"alice": "modeller", "eve": "modeller", "bob": "pod"})

    hub = await start_hub(tmp_path, clock_window=60)
    try:
        bob = await connect(hub.port, ids["bob"], accepts=["alice"])
        raw = RawSession(hub.port)
        welcome = await raw.login(ids["alice"])
        seq = welcome["last_sequence"] + 10
        now = time.time()

        def crafted(sequence: int, **changes: object) -> Message:
            base = Message(
                MessageType.JOB_REQUEST,
                "alice",
                "bob",
                "t",
                sequence=sequence,
                timestamp=now,
                body={"marker": MARKER},
            )
            return base.with_updates(**changes)

        ok = await raw.send(ids["alice"], crafted(seq))
        assert ok["ok"], ok
        # a replay of the same signed message, an older one, a stale and a future one
        refusals = {
            "replay": await raw.send(ids["alice"], crafted(seq), ref=2),
            "reordered": await raw.send(ids["alice"], crafted(seq - 1), ref=3),
            "stale": await raw.send(ids["alice"], crafted(seq + 1, timestamp=now - 3600), 4),
            "future": await raw.send(ids["alice"], crafted(seq + 2, timestamp=now + 3600), 5),
            "forged sender": await raw.send(ids["alice"], crafted(seq + 3, sender="eve"), 6),
            "unknown recipient": await raw.send(
                ids["alice"], crafted(seq + 4, recipient="nobody"), 7
            ),
        }
        frame_signed_by_eve = crafted(seq + 5)
        frame = encode(frame_signed_by_eve)
        refusals["bad signature"] = await raw.send_frame(
            frame, sign_frame(ids["eve"], frame), ref=8
        )
        altered = bytearray(frame)
        altered[-3] ^= 1
        refusals["altered"] = await raw.send_frame(
            bytes(altered), sign_frame(ids["alice"], frame), ref=9
        )
        expected = {
            "replay": "ReplayedMessageError",
            "reordered": "ReplayedMessageError",
            "stale": "StaleMessageError",
            "future": "StaleMessageError",
            "forged sender": "AccessDeniedError",
            "unknown recipient": "UnknownRecipientError",
            "bad signature": "BadSignatureError",
            "altered": "BadSignatureError",
        }
        # the hub names each refusal by its catalogue code, never by a class name
        assert {k: (v["ok"], v.get("code")) for k, v in refusals.items()} == {
            k: (False, getattr(errors, v).code) for k, v in expected.items()
        }
        assert all("error" not in v for v in refusals.values())
        # eve is a registered modeller, but bob does not accept her
        eve = await connect(hub.port, ids["eve"])
        with pytest.raises(AccessDeniedError):
            await eve.send(_message("bob"))
        # bob got exactly one message, which it cannot even open (it was not sealed)
        with pytest.raises(ReceiveTimeoutError):
            await bob.receive(timeout=0.5)
        assert len(bob.refused) == 1 and "DecryptionError" in bob.refused[0]
        assert hub.store.queued("bob") == 0
        await raw.close()
        for mailbox in (bob, eve):
            await mailbox.close()
    finally:
        await hub.stop()


async def test_message_size_cap(tmp_path: Path) -> None:
    ids = register(tmp_path, {"alice": "modeller", "bob": "pod"})

    hub = await start_hub(tmp_path, max_message_bytes=64 * 1024)
    try:
        alice = await connect(hub.port, ids["alice"], max_message_bytes=64 * 1024)
        bob = await connect(hub.port, ids["bob"], accepts=["alice"])
        big = np.zeros(128 * 1024, dtype=np.uint8)
        with pytest.raises(MessageTooLargeError):
            await alice.send(_message("bob").with_updates(tensors={"w": big}))
        # a client that ignores the cap is cut off; the hub keeps serving others
        raw = RawSession(hub.port)
        await raw.login(ids["alice"])
        await raw.write(
            control(Kind.SEND_START, {"ref": 1, "size": 10 << 20, "signature": b"x" * 64})
        )
        kind, fail = await raw.read()
        assert kind is Kind.FAIL and fail["code"] == errors.MessageTooLargeError.code
        await raw.close()
        alice2 = await connect(hub.port, ids["alice"])
        await alice2.send(_message("bob"))
        assert (await bob.receive(timeout=5)).body == {"marker": MARKER, "index": 0}
        for mailbox in (alice, alice2, bob):
            await mailbox.close()
    finally:
        await hub.stop()


async def test_unknown_recipient_and_offline_delivery(shared_hub: SharedHub) -> None:
    ids = shared_hub.identities(alice="modeller", bob="pod")
    alice = await connect(shared_hub.port, ids["alice"])
    with pytest.raises(UnknownRecipientError):
        await alice.send(_message("nobody"))
    for index in range(5):  # bob is offline: the hub keeps them
        await alice.send(_message(ids["bob"].name, index=index))
    bob = await connect(shared_hub.port, ids["bob"], accepts=[ids["alice"].name])
    got = [await bob.receive(timeout=5) for _ in range(5)]
    assert [m.body["index"] for m in got] == list(range(5))  # type: ignore[index]
    await bob.close()
    await alice.close()


async def test_hub_restart_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    ids = register(tmp_path, {"alice": "modeller", "bob": "pod"})

    hub = await start_hub(tmp_path)
    port = hub.port
    alice = await connect(port, ids["alice"], backoff=(0.05, 0.2))
    bob = await connect(port, ids["bob"], accepts=["alice"], backoff=(0.05, 0.2))
    for index in range(3):
        await alice.send(_message("bob", index=index))
    assert (await bob.receive(timeout=5)).body["index"] == 0  # type: ignore[index]
    await hub.stop(grace=None)
    # while the hub is down a send waits; it completes once the hub is back
    pending = asyncio.ensure_future(alice.send(_message("bob", index=3)))
    await asyncio.sleep(0.3)
    assert not pending.done()
    hub = await start_hub(tmp_path, port=port)
    try:
        await asyncio.wait_for(pending, 10)
        got = [(await bob.receive(timeout=10)).body["index"] for _ in range(3)]  # type: ignore[index]
        assert got == [1, 2, 3]
        with pytest.raises(ReceiveTimeoutError):
            await bob.receive(timeout=0.5)
        assert alice.reconnects >= 1 and bob.reconnects >= 1
        await alice.close()
        await bob.close()
    finally:
        await hub.stop()


async def test_unreachable_hub() -> None:
    mailbox = GrpcMailbox(
        Identity.generate("alice"), f"127.0.0.1:{free_port()}", insecure=True, backoff=(0.05, 0.1)
    )
    with pytest.raises(HubUnavailableError):
        await mailbox.connect(timeout=1.0)


async def test_tls_and_mutual_tls(tmp_path: Path) -> None:
    from fedloom.hub._server import HubServer, HubSettings
    from fedloom.hub._tls import init_hub_tls, issue_client_certificate
    from fedloom.transport._hub_config import TlsClientConfig

    ids = register(tmp_path, {"alice": "modeller", "bob": "pod"})
    tls = init_hub_tls(tmp_path / "tls")
    alice_cert, alice_key = issue_client_certificate(tls, "alice", tmp_path / "client")
    other_ca = init_hub_tls(tmp_path / "other-tls")

    hub = HubServer(HubSettings(data_dir=tmp_path, tls=tls, require_client_auth=True))
    await hub.start()
    address = f"127.0.0.1:{hub.port}"
    try:
        for refused in (
            TlsClientConfig(ca=tls.ca_certificate),  # no client certificate
            TlsClientConfig(ca=other_ca.ca_certificate, certificate=alice_cert, key=alice_key),
        ):
            mailbox = GrpcMailbox(ids["alice"], address, tls=refused, backoff=(0.05, 0.1))
            with pytest.raises(HubUnavailableError):
                await mailbox.connect(timeout=2)
        good = TlsClientConfig(ca=tls.ca_certificate, certificate=alice_cert, key=alice_key)
        alice = await GrpcMailbox(ids["alice"], address, tls=good).connect()
        assert alice.role == "modeller"
        await alice.close()
    finally:
        await hub.stop()


def test_plaintext_needs_an_explicit_choice(tmp_path: Path) -> None:
    from fedloom.errors import ConfigError
    from fedloom.hub._server import HubSettings

    with pytest.raises(ConfigError, match="insecure"):
        HubSettings(data_dir=tmp_path)
    with pytest.raises(ConfigError, match="insecure"):
        GrpcMailbox(Identity.generate("alice"), "127.0.0.1:1")


async def test_answers_interleaved_with_a_large_delivery(
    shared_hub: SharedHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub's RESULTs to bob may arrive between the chunks of a big delivery to bob."""
    from fedloom.transport import _frames as frames

    monkeypatch.setattr(frames, "CHUNK_BYTES", 64 << 10)  # many chunks per delivery
    ids = shared_hub.identities(alice="modeller", bob="pod")
    alice = await connect(shared_hub.port, ids["alice"])
    bob = await connect(shared_hub.port, ids["bob"], accepts=[ids["alice"].name])
    big = np.arange(1 << 20, dtype=np.float32)  # 4 MB: 64 chunks

    sent_big = asyncio.Event()

    async def bob_chatters() -> int:
        index = 0
        while not sent_big.is_set() or index < 20:
            await bob.send(_message(ids["alice"].name, index=index))
            index += 1
        return index

    async def alice_sends_big() -> None:
        for index in range(6):
            message = _message(ids["bob"].name, index=index)
            await alice.send(message.with_updates(tensors={"w": big}))
        sent_big.set()

    chatter = asyncio.ensure_future(bob_chatters())
    await alice_sends_big()
    got = [await bob.receive(timeout=30) for _ in range(6)]
    count = await chatter
    assert [m.body["index"] for m in got] == list(range(6))  # type: ignore[index]
    assert all(np.array_equal(m.tensors["w"], big) for m in got)
    small = [await alice.receive(timeout=30) for _ in range(count)]
    assert [m.body["index"] for m in small] == list(range(count))  # type: ignore[index]
    assert bob.reconnects == 0 and alice.reconnects == 0
    await alice.close()
    await bob.close()
