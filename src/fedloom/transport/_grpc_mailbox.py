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
from typing import Any, cast

from fedloom.crypto import PublicIdentity
from fedloom.crypto._sealing import sign_frame, verify_frame
from fedloom.errors import (
    AuthenticationError,
    FedloomError,
    HubUnavailableError,
    MailboxClosedError,
    ProtocolError,
    ReceiveTimeoutError,
    UnknownRecipientError,
)
from fedloom.transport import _frames as frames
from fedloom.transport._base import MailboxStatistics
from fedloom.transport._frames import Kind
from fedloom.transport._grpc_link import (
    _CLOSED,
    ConnectionEvent,
    _HubLink,
    _InFlight,
)
from fedloom.wire import Message, decode, encode

logger = logging.getLogger(__name__)

_OFFLOAD_BYTES = 1 << 20


def _pass_turn(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


class GrpcMailbox(_HubLink):
    """One identity's mailbox on a remote hub (implements ``Mailbox``).

    Use ``mailbox = await GrpcMailbox(...).connect()`` and ``await mailbox.close()``.
    ``on_connection`` is called with a :class:`ConnectionEvent` whenever the connection
    is made, lost, or an attempt fails (a daemon prints them; they are never raised).
    """

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

    def statistics(self) -> MailboxStatistics:
        """What this mailbox has sent, received and has queued, and its connection."""
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

    async def _acknowledge(self, delivery_id: int) -> None:
        # if this fails the hub delivers it again after a reconnect and we drop the copy
        with contextlib.suppress(HubUnavailableError):
            await self._write([frames.control(Kind.ACK, {"id": delivery_id})])

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


__all__ = ["ConnectionEvent", "GrpcMailbox"]
