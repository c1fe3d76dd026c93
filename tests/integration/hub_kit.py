"""Helpers for hub tests: identities, an in-process hub on 127.0.0.1, raw hub sessions."""

from __future__ import annotations

import asyncio
import itertools
import socket
import threading
from collections.abc import Iterable, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from fedloom.crypto import Identity, sign
from fedloom.crypto._sealing import sign_frame
from fedloom.hub._server import HubServer, HubSettings
from fedloom.hub._store import HubStore
from fedloom.transport import _frames as frames
from fedloom.transport._frames import Kind
from fedloom.transport._grpc_mailbox import GrpcMailbox
from fedloom.transport._grpc_options import grpc_options
from fedloom.wire import Message, encode

HUB_START_TIMEOUT = 30.0
"""Seconds the shared hub may take to start or stop before the session gives up on it."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def register(data_dir: Path, roles: Mapping[str, str]) -> dict[str, Identity]:
    """Make an identity per name and register it with the hub store in ``data_dir``."""
    identities = {name: Identity.generate(name) for name in roles}
    with HubStore(data_dir) as store:
        for name, role in roles.items():
            store.register(identities[name].public(), role)
    return identities


async def start_hub(data_dir: Path, **settings: Any) -> HubServer:
    hub = HubServer(HubSettings(data_dir=data_dir, insecure=True, **settings))
    await hub.start()
    return hub


async def connect(
    hub_port: int,
    identity: Identity,
    accepts: Iterable[str] | None = None,
    **options: Any,
) -> GrpcMailbox:
    mailbox = GrpcMailbox(
        identity, f"127.0.0.1:{hub_port}", insecure=True, accepts=accepts, **options
    )
    return await mailbox.connect()


class GrpcTestHub:
    """A gRPC hub in this process as the ``Hub`` contract sees it (for ``check_hub``):
    the identities are registered before it starts, and connect with their own keys."""

    def __init__(self, server: HubServer, identities: Mapping[str, Identity]) -> None:
        self.server = server
        self._identities = identities

    @classmethod
    async def start(cls, data_dir: Path, roles: Mapping[str, str]) -> GrpcTestHub:
        identities = register(data_dir, roles)
        return cls(await start_hub(data_dir), identities)

    async def open_mailbox(
        self, identity: str, role: str, *, accepts: Iterable[str] | None = None
    ) -> GrpcMailbox:
        return await connect(self.server.port, self._identities[identity], accepts)

    async def close(self) -> None:
        await self.server.stop()


class RawSession:
    """A hand-driven hub connection: authenticates, then sends crafted frames."""

    def __init__(self, port: int) -> None:
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=grpc_options())
        self.call: Any = self._channel.stream_stream(frames.SERVICE_METHOD)()

    async def write(self, item: bytes) -> None:
        await self.call.write(item)

    async def read(self) -> tuple[Kind, dict[str, Any]]:
        item = await self.call.read()
        assert isinstance(item, bytes), f"the hub ended the stream: {item!r}"
        kind, payload = frames.parse(item)
        return kind, frames.fields_of(kind, payload, {})

    async def login(self, identity: Identity, accepts: list[str] | None = None) -> dict[str, Any]:
        hello: dict[str, Any] = {"identity": identity.name, "version": 1}
        if accepts is not None:
            hello["accepts"] = accepts
        await self.write(frames.control(Kind.HELLO, hello))
        kind, challenge = await self.read()
        assert kind is Kind.CHALLENGE, (kind, challenge)
        signature = sign(identity, frames.auth_payload(challenge["nonce"], identity.name))
        await self.write(frames.control(Kind.AUTH, {"signature": signature}))
        kind, welcome = await self.read()
        assert kind is Kind.WELCOME, (kind, welcome)
        return welcome

    async def send_frame(self, frame: bytes, signature: bytes, ref: int = 1) -> dict[str, Any]:
        await self.write(
            frames.control(
                Kind.SEND_START, {"ref": ref, "size": len(frame), "signature": signature}
            )
        )
        for chunk in frames.chunks(Kind.SEND_DATA, frame):
            await self.write(chunk)
        kind, result = await self.read()
        assert kind is Kind.RESULT, (kind, result)
        return result

    async def send(self, identity: Identity, message: Message, ref: int = 1) -> dict[str, Any]:
        """Send ``message`` as is (no sealing), signed by ``identity``."""
        frame = encode(message)
        return await self.send_frame(frame, sign_frame(identity, frame), ref)

    async def close(self) -> None:
        await self._channel.close(grace=None)


class SharedHub:
    """A hub serving the whole session on ``127.0.0.1:port`` (plaintext, default settings).

    Attributes:
        port: Where it listens.
        data_dir: Its store; tests must not read or change its files.
    """

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="shared-hub")
        self._names = itertools.count(1)
        self._lock = threading.Lock()
        self._server = HubServer(HubSettings(data_dir=data_dir, insecure=True, port=0))
        self.port = 0

    def start(self) -> None:
        self._thread.start()
        self._call(self._server.start())
        self.port = self._server.port

    def stop(self) -> None:
        try:
            self._call(self._server.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(HUB_START_TIMEOUT)
            self._loop.close()

    def identities(self, **roles: str) -> dict[str, Identity]:
        """A fresh registered identity per keyword (``alice="modeller"``), under a unique name.

        The result maps each keyword to its identity; its ``.name`` (``alice-7``) is the
        name to address messages to, so no two tests ever share a mailbox.
        """
        with self._lock:
            serial = next(self._names)
        made = {key: Identity.generate(f"{key}-{serial}") for key in roles}

        async def register_all() -> None:  # in the hub's thread: its store is its own
            for key, role in roles.items():
                self._server.store.register(made[key].public(), role)

        self._call(register_all())
        return made

    def _call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(HUB_START_TIMEOUT)
