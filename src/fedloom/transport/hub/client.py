"""A pod's or a modeller's connection to a hub: the gRPC :class:`~fedloom.transport.Mailbox`.

:class:`GrpcMailbox` keeps one bidirectional stream open to the hub and re-opens it with
exponential back-off when the hub goes away; nothing is lost meanwhile:

- ``send`` stamps, seals (end-to-end), signs and streams the message, and returns only when
  the hub has committed it. One message is in flight at a time; if the connection drops
  before the hub's answer, it is sent again after the reconnect under the same sequence
  number (the hub's WELCOME says which sequence it stored last, so a message the hub
  already has is never stored twice).
- Delivered messages are checked (sender's signature, sealed envelope) and de-duplicated by
  the sender's sequence number, then queued for ``receive``; each is acknowledged to the
  hub when ``receive`` hands it out, so the hub deletes it only then.

Public keys of peers come from ``pinned`` (configured files) first, else from the hub's
directory; pin them where the hub is not trusted to vouch for identities.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Self, cast

import grpc
import grpc.aio

from fedloom.crypto import Identity, PublicIdentity, sign
from fedloom.crypto.pem import read_pem
from fedloom.errors import (
    AuthenticationError,
    ConfigError,
    FedloomError,
    HubUnavailableError,
    MailboxClosedError,
    ProtocolError,
    ReceiveTimeoutError,
    ReplayedMessageError,
    UnknownRecipientError,
)
from fedloom.transport.base import MailboxStatistics
from fedloom.transport.hub import frames
from fedloom.transport.hub.channel_options import grpc_options
from fedloom.transport.hub.config import HubAddress, TlsClientConfig, parse_hub_address
from fedloom.transport.hub.frames import Kind
from fedloom.transport.sealing import Sealer, sign_frame, verify_frame
from fedloom.wire import DEFAULT_MAX_MESSAGE_BYTES, Message, decode, encode

logger = logging.getLogger(__name__)

_OFFLOAD_BYTES = 1 << 20
_CLOSED = object()
CLOSE_SECONDS = 5.0
PARALLEL_SEALS = 2
_REASON_CHARACTERS = 200
_GRPC_DETAIL_PREFIX = re.compile(r"^(?:[A-Z_]+: )?(?:ipv[46]:\S+: )?")
"""Messages sealed and signed at once by one mailbox (bounds memory for large models)."""


def _pass_turn(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


def _reason(exc: BaseException) -> str:
    """One line saying why a connection attempt failed or a connection ended."""
    cause = exc.__cause__ if isinstance(exc, HubUnavailableError) else None
    error = cause if isinstance(cause, grpc.aio.AioRpcError) else exc
    if isinstance(error, grpc.aio.AioRpcError):
        details = error.details() or ""
        details = details.rsplit("last error: ", 1)[-1]
        details = _GRPC_DETAIL_PREFIX.sub("", details).strip(" []").removesuffix(": OK")
        text = f"{error.code().name}: {details}" if details else error.code().name
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())[:_REASON_CHARACTERS]


def _mark_retrieved(future: asyncio.Future[None]) -> None:
    """Mark an error as seen: close() may fail a future that nobody awaits any more (a
    connect() that timed out), and asyncio would log "exception was never retrieved"."""
    if not future.cancelled():
        future.exception()


class _FatalError(Exception):
    """Wraps a hub refusal that reconnecting cannot fix (one not ``retryable``: the hub
    refused who we are); internal, never raised to callers."""

    def __init__(self, error: FedloomError) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass
class _InFlight:
    sequence: int
    message: Message
    result: asyncio.Future[None]


@dataclass(frozen=True)
class ConnectionEvent:
    """What a :class:`GrpcMailbox`'s connection just did, for a status line.

    ``state`` is ``"connected"`` (the first time), ``"reconnected"``, or ``"retrying"``:
    an attempt failed or the connection was lost (``lost``), and the next attempt follows
    in ``retry_in`` seconds (exponential back-off with jitter).
    """

    state: Literal["connected", "reconnected", "retrying"]
    address: HubAddress
    reason: str = ""
    """Why the attempt failed or the connection ended (one line; ``retrying`` only)."""
    retry_in: float = 0.0
    lost: bool = False
    """``retrying`` after a connection that worked (not a failed attempt)."""


class GrpcMailbox:
    """One identity's mailbox on a remote hub (implements ``Mailbox``).

    Use ``mailbox = await GrpcMailbox(...).connect()`` and ``await mailbox.close()``.
    ``on_connection`` is called with a :class:`ConnectionEvent` whenever the connection
    is made, lost, or an attempt fails (a daemon prints them; they are never raised).
    """

    def __init__(
        self,
        identity: Identity,
        address: HubAddress | str,
        *,
        tls: TlsClientConfig | None = None,
        insecure: bool = False,
        accepts: Iterable[str] | None = None,
        pinned: Mapping[str, PublicIdentity] | None = None,
        reconnect: bool = True,
        backoff: tuple[float, float] = (0.1, 5.0),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        clock: Callable[[], float] = time.time,
        on_connection: Callable[[ConnectionEvent], None] | None = None,
    ) -> None:
        if (tls is None) == (not insecure):
            raise ConfigError(
                "a hub connection needs TLS (the hub's CA certificate) or an explicit "
                "insecure=True for plaintext, and not both"
            )
        self._identity = identity
        self.address = parse_hub_address(address) if isinstance(address, str) else address
        self._tls = tls
        self._accepts = None if accepts is None else sorted(set(accepts))
        self._pinned = dict(pinned or {})
        for name, public in self._pinned.items():
            if public.name != name:
                raise ConfigError(
                    f"pinned key for {name!r} is the public identity of {public.name!r}"
                )
        self._reconnect = reconnect
        self._backoff = backoff
        self._on_connection = on_connection
        self._established = False  # the current session got past the handshake
        self._last_reason = ""  # why the last attempt failed, for connect()'s error
        self._max_bytes = max_message_bytes
        self._clock = clock
        self._sealer = Sealer(identity, self.lookup, max_message_bytes=max_message_bytes)
        self._directory: dict[str, PublicIdentity] = {}
        self._inbound: asyncio.Queue[tuple[Message, int] | object] = asyncio.Queue()
        self._to_open: asyncio.Queue[tuple[int, str, bytes, bytes]] = asyncio.Queue()
        self._last_seen: dict[str, int] = {}
        self._last_turn: asyncio.Future[None] | None = None
        self._prepare_slots = asyncio.Semaphore(PARALLEL_SEALS)
        self._write_lock = asyncio.Lock()
        self._connected = asyncio.Event()
        self._call: Any = None
        self._next_sequence = 1
        self._in_flight: _InFlight | None = None
        self._lookups: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_ref = 1
        self._supervisor: asyncio.Task[None] | None = None
        self._opener: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self._closed = False
        self._sent = 0
        self._received = 0
        self.reconnects = 0
        self.refused: list[str] = []
        self.role = ""

    @property
    def identity(self) -> str:
        return self._identity.name

    async def connect(self, timeout: float | None = 15.0) -> Self:
        """Open the connection and authenticate (``timeout=None``: keep trying).

        Raises:
            HubUnavailableError: the hub cannot be reached within ``timeout`` seconds.
            UnknownIdentityError / BadSignatureError / AccessDeniedError: the hub refused
                this identity (reconnecting would not help).
        """
        if self._supervisor is not None:
            raise ConfigError("this mailbox is already connected")
        loop = asyncio.get_running_loop()
        self._first = loop.create_future()
        self._first.add_done_callback(_mark_retrieved)
        self._supervisor = loop.create_task(self._supervise(), name=f"hub:{self.identity}")
        self._opener = loop.create_task(self._open_deliveries(), name=f"open:{self.identity}")
        try:
            await asyncio.wait_for(asyncio.shield(self._first), timeout)
        except TimeoutError:
            await self.close()
            last = f" (last attempt: {self._last_reason})" if self._last_reason else ""
            raise HubUnavailableError(
                f"could not connect to the hub at {self.address} within {timeout} s{last}"
            ) from None
        except BaseException:
            await self.close()
            raise
        return self

    # --- Mailbox --------------------------------------------------------------------

    async def send(self, message: Message) -> Message:
        if self._closed:
            raise MailboxClosedError(f"mailbox {self.identity!r} is closed")
        await self._wait_connected()
        loop = asyncio.get_running_loop()
        # Concurrent sends seal and sign in parallel but go out in sequence order, one in
        # flight at a time: each waits for the send before it (its "turn").
        sequence = self._next_sequence
        self._next_sequence += 1
        stamped = message.with_updates(
            sender=self.identity, sequence=sequence, timestamp=self._clock()
        )
        previous, done = self._last_turn, loop.create_future()
        self._last_turn = done
        try:
            async with self._prepare_slots:
                frame, signature = await self._prepare(stamped)
            if previous is not None:
                await asyncio.shield(previous)
            if self._closed:
                raise MailboxClosedError(f"mailbox {self.identity!r} is closed")
            flight = _InFlight(sequence, stamped, loop.create_future())
            self._in_flight = flight
            try:
                await self._transmit(flight, frame, signature)
                await flight.result
            finally:
                self._in_flight = None
        finally:
            if previous is None or previous.done():
                _pass_turn(done)
            else:  # cancelled while waiting: the next send waits for our predecessor
                previous.add_done_callback(lambda _: _pass_turn(done))
        self._sent += 1
        return stamped

    async def receive(self, timeout: float | None = None) -> Message:
        if self._closed:
            raise MailboxClosedError(f"mailbox {self.identity!r} is closed")
        try:
            async with asyncio.timeout(timeout):  # wait_for could lose a cancellation (3.11)
                item = await self._inbound.get()
        except TimeoutError:
            raise ReceiveTimeoutError(
                f"no message for {self.identity!r} within {timeout} s"
            ) from None
        if not isinstance(item, tuple):
            self._inbound.put_nowait(_CLOSED)
            raise MailboxClosedError(f"mailbox {self.identity!r} is closed")
        message, delivery_id = cast(tuple[Message, int], item)
        self._received += 1
        await self._acknowledge(delivery_id)
        return message

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = [task for task in (self._supervisor, self._opener) if task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            # bounded: closing must not hang on a connection that is going away. Not
            # asyncio.wait_for, which on 3.11 waits without end for a cancelled task that
            # does not finish, after its time-out too
            _, stuck = await asyncio.wait(tasks, timeout=CLOSE_SECONDS)
            for task in stuck:
                logger.warning(
                    "%s: %s did not stop within %g s", self.identity, task, CLOSE_SECONDS
                )
        self._inbound.put_nowait(_CLOSED)
        closed = MailboxClosedError(f"mailbox {self.identity!r} is closed")
        if self._in_flight is not None and not self._in_flight.result.done():
            self._in_flight.result.set_exception(closed)
        for future in self._lookups.values():
            if not future.done():
                future.set_exception(closed)
        if self._first is not None and not self._first.done():
            self._first.set_exception(closed)
        self._connected.set()  # wake senders waiting for a connection

    def statistics(self) -> MailboxStatistics:
        return MailboxStatistics(
            identity=self.identity,
            sent=self._sent,
            received=self._received,
            queued=0 if self._closed else self._inbound.qsize(),
            closed=self._closed,
        )

    # --- directory --------------------------------------------------------------------

    async def lookup(self, name: str) -> PublicIdentity:
        """The public identity of ``name``: pinned, else as the hub's directory has it.

        Raises:
            UnknownRecipientError: the hub has no identity ``name``.
        """
        found = self._pinned.get(name) or self._directory.get(name)
        if found is not None:
            return found
        while True:  # a lookup cut short by a lost connection is asked again after it
            await self._wait_connected()
            ref = self._next_ref
            self._next_ref += 1
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._lookups[ref] = future
            try:
                await self._write([frames.control(Kind.LOOKUP, {"ref": ref, "name": name})])
                answer = await future
                break
            except HubUnavailableError:
                continue
            finally:
                self._lookups.pop(ref, None)
        if not isinstance(answer.get("public"), dict):
            raise UnknownRecipientError(f"no identity {name!r} on this hub")
        public = PublicIdentity.from_dict(answer["public"])
        if public.name != name:
            raise ProtocolError(f"the hub answered a lookup of {name!r} with {public.name!r}")
        self._directory[name] = public
        return public

    # --- sending ----------------------------------------------------------------------

    async def _wait_connected(self) -> None:
        await self._connected.wait()
        if self._closed:
            raise MailboxClosedError(f"mailbox {self.identity!r} is closed")

    async def _prepare(self, stamped: Message) -> tuple[bytes, bytes]:
        await self._sealer.prepare(stamped)
        size = sum(t.nbytes for t in stamped.tensors.values() if hasattr(t, "nbytes"))
        if size > _OFFLOAD_BYTES:
            return await asyncio.to_thread(self._seal_and_sign, stamped)
        return self._seal_and_sign(stamped)

    def _seal_and_sign(self, stamped: Message) -> tuple[bytes, bytes]:
        frame = encode(self._sealer.seal(stamped), max_bytes=self._max_bytes)
        return frame, sign_frame(self._identity, frame)

    async def _transmit(self, flight: _InFlight, frame: bytes, signature: bytes) -> None:
        start = frames.control(
            Kind.SEND_START,
            {"ref": flight.sequence, "size": len(frame), "signature": signature},
        )
        try:
            await self._write([start, *frames.chunks(Kind.SEND_DATA, frame)])
        except HubUnavailableError:
            logger.info("%s: hub went away while sending; will resend", self.identity)

    async def _resend(self, flight: _InFlight) -> None:
        """Send the in-flight message again after a reconnect, with a fresh timestamp."""
        again = flight.message.with_updates(timestamp=self._clock())
        frame, signature = await self._prepare(again)
        flight.message = again
        await self._transmit(flight, frame, signature)

    async def _write(self, items: list[bytes]) -> None:
        async with self._write_lock:
            call = self._call
            if call is None:
                raise HubUnavailableError("not connected to the hub")
            try:
                for item in items:
                    await call.write(item)
            except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as exc:
                # end the session for sure: the supervisor reconnects and resends
                call.cancel()
                raise HubUnavailableError(f"lost the hub connection: {exc}") from exc

    async def _acknowledge(self, delivery_id: int) -> None:
        # if this fails the hub delivers it again after a reconnect and we drop the copy
        with contextlib.suppress(HubUnavailableError):
            await self._write([frames.control(Kind.ACK, {"id": delivery_id})])

    # --- the connection -------------------------------------------------------------------

    def _channel(self) -> grpc.aio.Channel:
        target = f"{self.address.host}:{self.address.port}"
        if self._tls is None:
            return grpc.aio.insecure_channel(target, options=grpc_options())
        tls = self._tls
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read_pem(tls.ca),
            private_key=None if tls.key is None else read_pem(tls.key, private=True),
            certificate_chain=None if tls.certificate is None else read_pem(tls.certificate),
        )
        return grpc.aio.secure_channel(target, credentials, options=grpc_options())

    async def _supervise(self) -> None:
        delay = self._backoff[0]
        while not self._closed:
            connected_once = self._first is not None and self._first.done()
            self._established = False
            reason = "the hub closed the connection"
            try:
                await self._session()
            except _FatalError as fatal:
                if self._first is not None and not self._first.done():
                    self._first.set_exception(fatal.error)
                    return
                reason = str(fatal.error)
                logger.error("%s: the hub refused this identity: %s", self.identity, reason)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                reason = _reason(exc)
                logger.info("%s: hub connection lost: %s", self.identity, reason)
            if not self._reconnect and connected_once:
                await self.close()
                return
            if self._established:  # a connection that worked starts the back-off again
                delay = self._backoff[0]
            self._last_reason = reason
            wait = delay * (0.5 + random.random())
            self._notify(ConnectionEvent("retrying", self.address, reason, wait, self._established))
            await asyncio.sleep(wait)
            delay = min(delay * 2, self._backoff[1])

    def _notify(self, event: ConnectionEvent) -> None:
        if self._on_connection is None:
            return
        try:
            self._on_connection(event)
        except Exception:  # a status line must never take the connection down
            logger.exception("%s: on_connection callback failed", self.identity)

    async def _session(self) -> None:
        channel = self._channel()
        try:
            call: Any = channel.stream_stream(frames.SERVICE_METHOD)()
            welcome = await self._handshake(call)
            self._call = call
            self.role = str(welcome["role"])
            self._next_sequence = max(self._next_sequence, welcome["last_sequence"] + 1)
            self._connected.set()
            self._established = True
            if self._first is not None and not self._first.done():
                self._first.set_result(None)
                self._notify(ConnectionEvent("connected", self.address))
            else:
                self.reconnects += 1
                logger.info("%s: reconnected to the hub", self.identity)
                self._notify(ConnectionEvent("reconnected", self.address))
            flight = self._in_flight
            if flight is not None and not flight.result.done():
                if flight.sequence <= welcome["last_sequence"]:
                    flight.result.set_result(None)  # the hub stored it before it went away
                else:
                    asyncio.get_running_loop().create_task(self._resend(flight))
            await self._read(call)
        finally:
            self._connected.clear()
            self._call = None
            for future in self._lookups.values():
                if not future.done():
                    future.set_exception(HubUnavailableError("lost the hub connection"))
            await channel.close(grace=None)

    async def _handshake(self, call: Any) -> dict[str, Any]:
        hello: dict[str, Any] = {"identity": self.identity, "version": 1}
        if self._accepts is not None:
            hello["accepts"] = self._accepts
        await call.write(frames.control(Kind.HELLO, hello))
        challenge = await self._expect(call, Kind.CHALLENGE, {"nonce": bytes})
        signature = sign(self._identity, frames.auth_payload(challenge["nonce"], self.identity))
        await call.write(frames.control(Kind.AUTH, {"signature": signature}))
        return await self._expect(
            call, Kind.WELCOME, {"role": str, "last_sequence": int, "max_message_bytes": int}
        )

    async def _expect(self, call: Any, kind: Kind, required: Mapping[str, type]) -> dict[str, Any]:
        item = await self._read_item(call)
        got, payload = frames.parse(item)
        if got is Kind.FAIL:
            error = frames.error_from_fields(frames.fields_of(got, payload, {}))
            if error.retryable:  # the refusal may pass on another try: reconnect
                raise error
            raise _FatalError(error)
        if got is not kind:
            raise ProtocolError(f"expected {kind.name} from the hub, got {got.name}")
        return frames.fields_of(got, payload, required)

    async def _read_item(self, call: Any) -> bytes:
        try:
            item = await call.read()
        except grpc.aio.AioRpcError as exc:
            raise HubUnavailableError(
                f"hub at {self.address} unavailable: {exc.code().name} {exc.details()}"
            ) from exc
        if item is grpc.aio.EOF:
            raise HubUnavailableError("the hub closed the connection")
        if not isinstance(item, bytes):
            raise ProtocolError("the hub sent a non-bytes item")
        return item

    async def _read(self, call: Any) -> None:
        # The hub interleaves its answers (RESULT, DIRECTORY) with the chunks of a delivery,
        # so an answer never waits behind a large message; deliveries do not interleave.
        incoming: frames.Reassembly | None = None
        while True:
            kind, payload = frames.parse(await self._read_item(call))
            if kind is Kind.DELIVER_DATA:
                if incoming is None:
                    raise ProtocolError("a delivery chunk arrived without its start")
                if incoming.add(payload):
                    header = incoming.header
                    self._to_open.put_nowait(
                        (header["id"], header["sender"], incoming.frame, header["signature"])
                    )
                    incoming = None
            elif kind is Kind.DELIVER_START:
                if incoming is not None:
                    raise ProtocolError("a delivery started before the last one ended")
                header = frames.fields_of(
                    kind, payload, {"id": int, "size": int, "signature": bytes, "sender": str}
                )
                incoming = frames.Reassembly(header["size"], self._max_bytes, header)
            elif kind is Kind.RESULT:
                self._on_result(frames.fields_of(kind, payload, {"ref": int, "ok": bool}))
            elif kind is Kind.DIRECTORY:
                answer = frames.fields_of(kind, payload, {"ref": int})
                future = self._lookups.get(answer["ref"])
                if future is not None and not future.done():
                    future.set_result(answer)
            elif kind is Kind.FAIL:
                raise frames.error_from_fields(frames.fields_of(kind, payload, {}))
            else:
                raise ProtocolError(f"unexpected {kind.name} frame from the hub")

    def _on_result(self, result: dict[str, Any]) -> None:
        flight = self._in_flight
        if flight is None or flight.sequence != result["ref"] or flight.result.done():
            return
        if result["ok"]:
            flight.result.set_result(None)
            return
        error = frames.error_from_fields(result)
        if isinstance(error, ReplayedMessageError):
            # only possible for a resend the hub had already stored
            flight.result.set_result(None)
        else:
            flight.result.set_exception(error)

    # --- receiving --------------------------------------------------------------------

    async def _open_deliveries(self) -> None:
        while True:
            delivery_id, sender, frame, signature = await self._to_open.get()
            try:
                message = await self._open(sender, frame, signature)
            except (FedloomError, ValueError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                logger.warning("%s: refused a message from %s: %s", self.identity, sender, reason)
                self.refused.append(reason[:500])
                await self._acknowledge(delivery_id)
                continue
            if message is None:  # a copy delivered again after a reconnect
                await self._acknowledge(delivery_id)
                continue
            self._inbound.put_nowait((message, delivery_id))

    async def _open(self, sender: str, frame: bytes, signature: bytes) -> Message | None:
        public = await self.lookup(sender)
        if len(frame) > _OFFLOAD_BYTES:
            await asyncio.to_thread(verify_frame, public, frame, signature)
        else:
            verify_frame(public, frame, signature)
        sealed = decode(frame, max_bytes=self._max_bytes)
        if sealed.sender != sender or sealed.recipient != self.identity:
            raise AuthenticationError(
                f"a message signed by {sender!r} names {sealed.sender!r} → {sealed.recipient!r}"
            )
        if sealed.sequence <= self._last_seen.get(sender, 0):
            return None
        if len(frame) > _OFFLOAD_BYTES:
            message = await asyncio.to_thread(self._sealer.open, sealed)
        else:
            message = self._sealer.open(sealed)
        self._last_seen[sender] = sealed.sequence
        return message
