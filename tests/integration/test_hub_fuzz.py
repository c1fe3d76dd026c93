"""A fuzzing client never takes the hub down, and honest clients keep being served."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
from pathlib import Path

import grpc
import grpc.aio
import msgpack
import pytest

from fedloom import errors
from fedloom.transport import _frames as frames
from fedloom.transport._frames import Kind
from fedloom.transport._grpc_options import grpc_options
from fedloom.wire import Message, MessageType

from .hub_kit import RawSession, connect, register, start_hub

SEED = 20261123


def _garbage_items(rng: random.Random, count: int) -> list[bytes]:
    """Stream items a broken or hostile client might send, before or after logging in."""
    items: list[bytes] = []
    kinds = [int(kind) for kind in Kind] + [0x00, 0x7F, 0xFF]
    for _ in range(count):
        choice = rng.randrange(8)
        kind = bytes([rng.choice(kinds)])
        if choice == 0:
            items.append(b"")
        elif choice == 1:
            items.append(kind + rng.randbytes(rng.randrange(0, 64)))
        elif choice == 2:  # well-formed msgpack, wrong fields or types
            fields = {
                rng.choice(["ref", "size", "id", "name", "signature", "x"]): rng.choice(
                    [None, -1, 2**63, "s", b"b", [1], {"a": 1}, 1.5, True]
                )
            }
            items.append(kind + msgpack.packb(fields))
        elif choice == 3:  # a message announced, then the wrong continuation
            start = {"ref": 1, "size": rng.randrange(1, 1 << 16), "signature": b"x" * 64}
            items.append(frames.control(Kind.SEND_START, start))
            items.append(bytes([rng.choice(kinds)]) + rng.randbytes(rng.randrange(0, 4096)))
        elif choice == 4:  # more data than announced
            items.append(frames.control(Kind.SEND_START, {"ref": 2, "size": 10, "signature": b"s"}))
            items.append(bytes([Kind.SEND_DATA]) + b"y" * 20)
        elif choice == 5:  # a complete message whose frame is garbage
            body = rng.randbytes(rng.randrange(16, 512))
            items.append(
                frames.control(
                    Kind.SEND_START, {"ref": 3, "size": len(body), "signature": b"s" * 64}
                )
            )
            items.append(bytes([Kind.SEND_DATA]) + body)
        elif choice == 6:  # deeply nested msgpack
            items.append(kind + b"\x91" * 5000 + b"\xc0")
        else:
            items.append(kind + msgpack.packb({"ref": rng.randrange(10), "name": "x" * 10_000}))
    return items


async def _fuzz_session(port: int, items: list[bytes], identity: object = None) -> None:
    session = RawSession(port)
    try:
        if identity is not None:
            await session.login(identity)  # type: ignore[arg-type]
        for item in items:
            await session.write(item)
        await asyncio.wait_for(session.call.read(), 5)
    except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError, TimeoutError):
        pass  # the hub is allowed to cut a fuzzing client off
    finally:
        await session.close()


def _raw_tcp_garbage(port: int, rng: random.Random) -> None:
    """Bytes that are not HTTP/2 at all, and a broken HTTP/2 preface."""
    for payload in (
        rng.randbytes(4096),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + rng.randbytes(2048),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(payload)
            sock.settimeout(1)
            with contextlib.suppress(OSError):
                sock.recv(1024)


@pytest.mark.async_timeout(180)
async def test_fuzzing_clients_never_crash_the_hub(tmp_path: Path) -> None:
    ids = register(tmp_path, {"alice": "modeller", "mallory": "modeller", "bob": "pod"})
    rng = random.Random(SEED)

    async def honest(alice: object, bob: object, count: int) -> list[int]:
        got = []
        for index in range(count):
            await alice.send(  # type: ignore[attr-defined]
                Message(MessageType.PROGRESS, "", "bob", "t", body={"index": index})
            )
            message = await bob.receive(timeout=10)  # type: ignore[attr-defined]
            got.append(message.body["index"])
            await asyncio.sleep(0.01)
        return got

    hub = await start_hub(tmp_path)
    try:
        alice = await connect(hub.port, ids["alice"])
        bob = await connect(hub.port, ids["bob"], accepts=["alice"])
        honest_run = asyncio.ensure_future(honest(alice, bob, 60))
        for round_index in range(30):
            logged_in = ids["mallory"] if round_index % 2 else None
            await _fuzz_session(hub.port, _garbage_items(rng, 12), logged_in)
            if round_index % 10 == 0:
                await asyncio.to_thread(_raw_tcp_garbage, hub.port, rng)
        assert await asyncio.wait_for(honest_run, 60) == list(range(60))
        refused = hub.statistics().refused
        assert sum(refused.values()) >= 20, refused
        assert hub.store.queued("bob") == 0, "nothing from the fuzzing client was stored"
        await alice.close()
        await bob.close()
    finally:
        await hub.stop()


@pytest.mark.parametrize("hostile", ["hello-as-other-kind", "no-auth", "slow-handshake"])
async def test_handshake_abuse(tmp_path: Path, hostile: str) -> None:
    ids = register(tmp_path, {"alice": "modeller", "bob": "pod"})

    hub = await start_hub(tmp_path)
    try:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{hub.port}", options=grpc_options())
        call = channel.stream_stream(frames.SERVICE_METHOD)()
        if hostile == "hello-as-other-kind":
            await call.write(frames.control(Kind.ACK, {"id": 1}))
        elif hostile == "no-auth":
            await call.write(frames.control(Kind.HELLO, {"identity": "alice", "version": 1}))
            await call.read()  # the challenge
            await call.write(frames.control(Kind.LOOKUP, {"ref": 1, "name": "bob"}))
        if hostile != "slow-handshake":
            item = await asyncio.wait_for(call.read(), 10)
            kind, payload = frames.parse(item)
            assert kind is Kind.FAIL
            assert frames.fields_of(kind, payload, {})["code"] == errors.ProtocolError.code
        await channel.close(grace=None)
        alice = await connect(hub.port, ids["alice"])
        assert hub.statistics().connected == ("alice",)
        await alice.close()
    finally:
        await hub.stop()
