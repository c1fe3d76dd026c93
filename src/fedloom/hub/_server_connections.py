"""One hub connection, from its handshake to its last delivery.

A client says HELLO, proves its identity by signing the hub's challenge, and then sends,
acknowledges and looks up identities; each message it sends is checked (signature, sender,
route, sequence, clock) before it is stored, and the messages queued for it are delivered
in order as they arrive. :class:`~fedloom.hub._server.HubServer` listens and
starts one of these per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedloom._registry import NAME_PATTERN
from fedloom.crypto import verify
from fedloom.crypto._sealing import verify_frame
from fedloom.errors import (
    AccessDeniedError,
    BadSignatureError,
    FedloomError,
    ProtocolError,
    ReplayedMessageError,
    RouteRefusedError,
    StaleMessageError,
    UnknownIdentityError,
    UnknownRecipientError,
    WireError,
)
from fedloom.hub._server_settings import HubSettings
from fedloom.hub._state import FrameCache, load_accepts, save_accepts
from fedloom.hub._store import HubStore, RegisteredIdentity
from fedloom.transport import _frames as frames
from fedloom.transport._frames import Kind
from fedloom.transport._routing import Endpoint, check_route, parse_role, pod_accepts
from fedloom.wire import Message, decode

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 10.0
ACCEPTS_FILE = "accepts.json"
RECENT_FRAMES_BYTES = 1 << 30
"""Memory the hub spends on keeping recently stored frames for delivery."""
_OFFLOAD_BYTES = 1 << 20  # frames above this are hashed and written off the event loop
_OUTGOING_ITEMS = 16  # bounded so a slow reader holds back its own deliveries only


@dataclass
class _Counters:
    """What :meth:`HubServer.statistics` reports, as the hub counts it."""

    stored: int = 0
    delivered: int = 0
    refused: Counter[str] = field(default_factory=Counter)


class _Session:
    """One authenticated connection."""

    def __init__(
        self,
        registered: RegisteredIdentity,
        accepts: frozenset[str] | None,
        outgoing: asyncio.Queue[bytes | None],
    ) -> None:
        self.registered = registered
        self.accepts = accepts
        self.outgoing = outgoing
        self.handler: asyncio.Task[Any] | None = asyncio.current_task()
        self.delivery: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.registered.name

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.name, parse_role(self.registered.role), self.accepts)

    def stop_delivery(self) -> None:
        if self.delivery is not None:
            self.delivery.cancel()

    def kick(self) -> None:
        """End this connection (it was replaced by a newer one, or the hub stops)."""
        self.stop_delivery()
        if self.handler is not None and self.handler is not asyncio.current_task():
            self.handler.cancel()


class _HubConnections:
    """The hub's open connections and what they share.

    The store, who each pod accepts, recently stored frames, and the counters
    :meth:`HubServer.statistics` reports.
    """

    def __init__(self, settings: HubSettings, *, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._clock = clock
        self.store = HubStore(settings.data_dir, synchronous=settings.synchronous)
        self._sessions: dict[str, _Session] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        # who each pod accepts, as it said when it last connected (kept across restarts,
        # so a message to a pod that is offline is refused at once, not at delivery)
        self._accepts_file = Path(settings.data_dir) / ACCEPTS_FILE
        self._accepts: dict[str, frozenset[str]] = load_accepts(self._accepts_file)
        self._stats = _Counters()
        self._recent = FrameCache(RECENT_FRAMES_BYTES)
        self._handlers: set[asyncio.Task[Any]] = set()  # every open connection's task

    # --- one connection --------------------------------------------------------------

    async def _connect(self, requests: AsyncIterator[bytes], context: Any) -> None:
        session: _Session | None = None
        writer: asyncio.Task[None] | None = None
        outgoing: asyncio.Queue[bytes | None] = asyncio.Queue(_OUTGOING_ITEMS)
        current = asyncio.current_task()
        if current is not None:
            self._handlers.add(current)
        try:
            writer = asyncio.get_running_loop().create_task(self._write(outgoing, context))
            iterator = aiter(requests)
            # in this task (asyncio.wait_for would run it in another): the session's
            # handler is this task, which kick() cancels
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                session = await self._handshake(iterator, outgoing)
            previous = self._sessions.get(session.name)
            if previous is not None:
                logger.info("%s reconnected; closing its previous connection", session.name)
                previous.kick()
            self._sessions[session.name] = session
            session.delivery = asyncio.get_running_loop().create_task(self._deliver(session))
            await self._serve(session, iterator)
        except (FedloomError, TimeoutError) as exc:
            error = exc if isinstance(exc, FedloomError) else ProtocolError("handshake timed out")
            self._stats.refused[type(error).__name__] += 1
            logger.info("hub: closing a connection: %s", error)
            with contextlib.suppress(asyncio.QueueFull):
                outgoing.put_nowait(frames.control(Kind.FAIL, frames.error_fields(error)))
        except asyncio.CancelledError:
            pass
        except Exception:  # a connection's failure must never take the hub down
            logger.exception("hub: connection failed")
        finally:
            if current is not None:
                self._handlers.discard(current)
            if session is not None:
                session.stop_delivery()
                if self._sessions.get(session.name) is session:
                    del self._sessions[session.name]
            if writer is not None:
                with contextlib.suppress(asyncio.QueueFull):
                    outgoing.put_nowait(None)
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(writer, 2.0)

    async def _write(self, outgoing: asyncio.Queue[bytes | None], context: Any) -> None:
        while True:
            item = await outgoing.get()
            if item is None:
                return
            await context.write(item)

    async def _handshake(
        self, requests: AsyncIterator[bytes], outgoing: asyncio.Queue[bytes | None]
    ) -> _Session:
        kind, payload = frames.parse(await anext(requests))
        if kind is not Kind.HELLO:
            raise ProtocolError(f"a connection must start with HELLO, not {kind.name}")
        hello = frames.fields_of(kind, payload, {"identity": str, "version": int})
        if hello["version"] != 1:
            raise ProtocolError(f"unsupported hub protocol version {hello['version']}")
        name = hello["identity"]
        registered = self.store.identity(name) if NAME_PATTERN.fullmatch(name) else None
        if registered is None:
            raise UnknownIdentityError(
                f"identity {name[:64]!r} is not registered with this hub "
                "(the hub admin registers it with `fedloom hub register`)"
            )
        accepts = _accepts_of(registered, hello.get("accepts"))
        nonce = os.urandom(32)
        await outgoing.put(frames.control(Kind.CHALLENGE, {"nonce": nonce}))
        kind, payload = frames.parse(await anext(requests))
        if kind is not Kind.AUTH:
            raise ProtocolError(f"expected AUTH, got {kind.name}")
        auth = frames.fields_of(kind, payload, {"signature": bytes})
        try:
            verify(registered.public, frames.auth_payload(nonce, name), auth["signature"])
        except BadSignatureError:
            raise BadSignatureError(f"{name!r} failed the hub's challenge") from None
        if accepts is not None and self._accepts.get(name) != accepts:
            self._accepts[name] = accepts
            save_accepts(self._accepts_file, self._accepts)
        await outgoing.put(
            frames.control(
                Kind.WELCOME,
                {
                    "identity": name,
                    "role": registered.role,
                    "last_sequence": self.store.last_sequence(name),
                    "max_message_bytes": self.settings.max_message_bytes,
                },
            )
        )
        logger.info("hub: %s %r connected", registered.role, name)
        return _Session(registered, accepts, outgoing)

    async def _serve(self, session: _Session, requests: AsyncIterator[bytes]) -> None:
        incoming: frames.Reassembly | None = None
        async for item in requests:
            kind, payload = frames.parse(item)
            if incoming is not None:
                if kind is not Kind.SEND_DATA:
                    raise ProtocolError(f"expected the rest of a message, got {kind.name}")
                if incoming.add(payload):
                    await self._on_send(session, incoming)
                    incoming = None
            elif kind is Kind.SEND_START:
                start = frames.fields_of(
                    kind, payload, {"ref": int, "size": int, "signature": bytes}
                )
                incoming = frames.Reassembly(start["size"], self.settings.max_message_bytes, start)
            elif kind is Kind.ACK:
                ack = frames.fields_of(kind, payload, {"id": int})
                if self.store.acknowledge(session.name, ack["id"]):
                    self._stats.delivered += 1
                    self._recent.pop(ack["id"])
            elif kind is Kind.LOOKUP:
                await session.outgoing.put(
                    self._lookup(frames.fields_of(kind, payload, {"ref": int, "name": str}))
                )
            else:
                raise ProtocolError(f"unexpected {kind.name} frame from a client")

    def _lookup(self, request: dict[str, Any]) -> bytes:
        name = request["name"]
        found = self.store.identity(name) if NAME_PATTERN.fullmatch(name) else None
        return frames.control(
            Kind.DIRECTORY,
            {
                "ref": request["ref"],
                "public": None if found is None else found.public.to_dict(),
                "role": None if found is None else found.role,
            },
        )

    async def _on_send(self, session: _Session, incoming: frames.Reassembly) -> None:
        ref = incoming.header["ref"]
        try:
            stored_id = await self._accept(session, incoming.frame, incoming.header["signature"])
        except (FedloomError, ValueError) as exc:
            error = exc if isinstance(exc, FedloomError) else WireError(str(exc))
            self._stats.refused[type(error).__name__] += 1
            logger.info("hub: refused a message from %s: %s", session.name, error)
            await session.outgoing.put(
                frames.control(Kind.RESULT, {"ref": ref, "ok": False, **frames.error_fields(error)})
            )
            return
        self._stats.stored += 1
        await session.outgoing.put(
            frames.control(Kind.RESULT, {"ref": ref, "ok": True, "id": stored_id})
        )

    async def _accept(self, session: _Session, frame: bytes, signature: bytes) -> int:
        big = len(frame) > _OFFLOAD_BYTES
        if big:
            await asyncio.to_thread(verify_frame, session.registered.public, frame, signature)
        else:
            verify_frame(session.registered.public, frame, signature)
        message = decode(frame, max_bytes=self.settings.max_message_bytes)
        self._check_route(session, message)
        skew = abs(message.timestamp - self._clock())
        if not skew <= self.settings.clock_window:
            raise StaleMessageError(
                f"message timestamp is {skew:.0f} s away from the hub's clock "
                f"(window {self.settings.clock_window:.0f} s); check the sender's clock"
            )
        append = self.store.append
        args = (session.name, message.recipient, message.sequence, memoryview(frame), signature)
        stored = await asyncio.to_thread(append, *args) if big else append(*args)
        if stored is not None:
            self._recent.put(stored.id, frame, signature)
        if stored is None:
            raise ReplayedMessageError(
                f"sequence {message.sequence} from {session.name!r} is not above the last "
                f"one stored ({self.store.last_sequence(session.name)}): replayed or reordered"
            )
        self._wakeup(message.recipient).set()
        return stored.id

    def _check_route(self, session: _Session, message: Message) -> None:
        if message.sender != session.name:
            raise AccessDeniedError(
                f"connection of {session.name!r} sent a message signed as from {message.sender!r}"
            )
        recipient = self.store.identity(message.recipient)
        if recipient is None:
            raise UnknownRecipientError(f"no identity {message.recipient!r} on this hub")
        # a pod that is offline is held to the accepts list it gave when it last connected
        role = parse_role(recipient.role)
        check_route(
            session.endpoint, Endpoint(recipient.name, role, self._accepts.get(recipient.name))
        )

    def _wakeup(self, name: str) -> asyncio.Event:
        event = self._wakeups.get(name)
        if event is None:
            event = self._wakeups[name] = asyncio.Event()
        return event

    async def _deliver(self, session: _Session) -> None:
        """Send the session's queued messages in order as they arrive (event-driven)."""
        wakeup = self._wakeup(session.name)
        after = 0
        while True:
            wakeup.clear()
            batch = self.store.pending(session.name, after_id=after, limit=32)
            if not batch:
                await wakeup.wait()
                continue
            for stored in batch:
                after = stored.id
                if not pod_accepts(session.endpoint, stored.sender):
                    self.store.acknowledge(session.name, stored.id)
                    self._stats.refused[RouteRefusedError.__name__] += 1
                    logger.warning(
                        "hub: dropped a message from %s: pod %s does not accept it",
                        stored.sender,
                        session.name,
                    )
                    continue
                cached = self._recent.get(stored.id)
                load = self.store.load
                if cached is not None:
                    frame, signature = cached
                elif stored.size > _OFFLOAD_BYTES:
                    frame, signature = await asyncio.to_thread(load, stored.id)
                else:
                    frame, signature = load(stored.id)
                await session.outgoing.put(
                    frames.control(
                        Kind.DELIVER_START,
                        {
                            "id": stored.id,
                            "size": len(frame),
                            "signature": signature,
                            "sender": stored.sender,
                        },
                    )
                )
                for chunk in frames.chunks(Kind.DELIVER_DATA, frame):
                    await session.outgoing.put(chunk)


def _accepts_of(registered: RegisteredIdentity, value: object) -> frozenset[str] | None:
    if registered.role != "pod":
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProtocolError("a pod's HELLO must list the modellers it accepts")
    return frozenset(value)
