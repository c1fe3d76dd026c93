"""A client's link to the hub: connect, authenticate, and reconnect with back-off.

One bidirectional stream is open at a time; the supervisor re-opens it when the hub goes
away (unless the hub refused who we are), resends the message in flight, and reads what
the hub sends: deliveries, answers to sends and lookups, failures.
:class:`~fedloom.transport._grpc_mailbox.GrpcMailbox` builds the ``Mailbox`` on this link.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Self

import grpc
import grpc.aio

from fedloom.crypto import Identity, PublicIdentity, sign
from fedloom.crypto._pem import read_pem
from fedloom.crypto._sealing import Sealer
from fedloom.errors import (
    ConfigError,
    FedloomError,
    HubUnavailableError,
    MailboxClosedError,
    ProtocolError,
    ReplayedMessageError,
)
from fedloom.transport import _frames as frames
from fedloom.transport._frames import Kind
from fedloom.transport._grpc_options import grpc_options
from fedloom.transport._hub_config import HubAddress, TlsClientConfig, parse_hub_address
from fedloom.wire import DEFAULT_MAX_MESSAGE_BYTES, Message

logger = logging.getLogger(__name__)

_CLOSED = object()
CLOSE_SECONDS = 5.0
PARALLEL_SEALS = 2
"""Messages sealed and signed at once by one mailbox (bounds memory for large models)."""
_REASON_CHARACTERS = 200
_GRPC_DETAIL_PREFIX = re.compile(r"^(?:[A-Z_]+: )?(?:ipv[46]:\S+: )?")


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
    """Mark an error as seen, so that asyncio does not log "exception was never retrieved".

    close() may fail a future that nobody awaits any more (a connect() that timed out).
    """
    if not future.cancelled():
        future.exception()


class _FatalError(Exception):
    """Wraps a hub refusal that reconnecting cannot fix; internal, never raised to callers.

    That is a refusal that is not ``retryable``: the hub refused who we are.
    """

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


class _HubLink(ABC):
    """The connection under a :class:`~fedloom.transport._grpc_mailbox.GrpcMailbox`.

    The mailbox supplies what the link calls back for: peers' keys (:meth:`lookup`), the
    resend of the message in flight, and the task that opens delivered messages.
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

    async def _wait_connected(self) -> None:
        await self._connected.wait()
        if self._closed:
            raise MailboxClosedError(f"mailbox {self.identity!r} is closed")

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

    @abstractmethod
    async def lookup(self, name: str) -> PublicIdentity:
        """The public identity of ``name`` (the sealer asks it for peers' keys)."""

    @abstractmethod
    async def _resend(self, flight: _InFlight) -> None:
        """Send the in-flight message again after a reconnect."""

    @abstractmethod
    async def _open_deliveries(self) -> None:
        """Check and queue the delivered messages for ``receive``, for as long as it runs."""
