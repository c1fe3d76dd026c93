"""Helpers for hub tests: identities, an in-process hub on 127.0.0.1, raw hub sessions."""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from fedloom.crypto import Identity, sign
from fedloom.transport.hub import frames
from fedloom.transport.hub.client import GrpcMailbox
from fedloom.transport.hub.frames import Kind
from fedloom.transport.hub.server import HubServer, HubSettings, grpc_options
from fedloom.transport.hub.store import HubStore
from fedloom.transport.sealing import sign_frame
from fedloom.wire import Message, encode


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
