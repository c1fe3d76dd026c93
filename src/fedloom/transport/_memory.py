"""In-memory hub: every identity gets a queue, all in one asyncio event loop.

Messages are encoded with the real wire codec on send and decoded on receive, and routed
by the hub's own rules (:func:`fedloom.transport._routing.check_route`), so code that runs
here also runs over the network: a body that msgpack cannot carry, an oversized message,
a pod writing to a pod or a modeller a pod does not accept fails here exactly as it would
over gRPC.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from fedloom.errors import (
    ConfigError,
    MailboxClosedError,
    ReceiveTimeoutError,
    UnknownRecipientError,
)
from fedloom.transport._base import MailboxStatistics
from fedloom.transport._routing import Endpoint, Role, accepts_of, check_route, parse_role
from fedloom.wire import DEFAULT_MAX_MESSAGE_BYTES, Message, decode, encode

Clock = Callable[[], float]

_CLOSED = object()


@dataclass(frozen=True)
class HubStatistics:
    """Counters of an in-memory hub."""

    identities: int
    messages: int
    bytes: int


class MemoryHub:
    """Routes encoded messages between connected identities in one event loop (a ``Hub``)."""

    def __init__(
        self, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, clock: Clock = time.time
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self._clock = clock
        self._queues: dict[str, asyncio.Queue[bytes | object]] = {}
        self._mailboxes: dict[str, MemoryMailbox] = {}
        self._endpoints: dict[str, Endpoint] = {}
        self._closed = False
        self._messages = 0
        self._bytes = 0

    def connect(
        self, identity: str, role: Role, *, accepts: Iterable[str] | None = None
    ) -> MemoryMailbox:
        """Connect ``identity`` as a ``role`` and return its mailbox.

        A pod lists the modellers it ``accepts`` (as it does in its HELLO to a real hub);
        a modeller lists none.

        Raises:
            ConfigError: the identity is empty or already connected, the role is not a
                hub role, a pod lists no accepts or a modeller lists some.
            MailboxClosedError: the hub was closed.
        """
        if self._closed:
            raise MailboxClosedError("the hub is closed")
        if not identity or len(identity) > 256:
            raise ConfigError("an identity must be a non-empty string of at most 256 chars")
        if identity in self._mailboxes:
            raise ConfigError(f"identity {identity!r} is already connected to this hub")
        checked_role = parse_role(role)
        endpoint = Endpoint(identity, checked_role, accepts_of(checked_role, accepts))
        self._queues[identity] = asyncio.Queue()
        mailbox = MemoryMailbox(self, identity)
        self._mailboxes[identity] = mailbox
        self._endpoints[identity] = endpoint
        return mailbox

    async def open_mailbox(
        self, identity: str, role: Role, *, accepts: Iterable[str] | None = None
    ) -> MemoryMailbox:
        """:meth:`connect`, as the ``Hub`` contract spells it."""
        return self.connect(identity, role, accepts=accepts)

    def identities(self) -> list[str]:
        """The identities connected to this hub, sorted."""
        return sorted(self._mailboxes)

    def _deliver(self, message: Message) -> Message:
        if self._closed:
            raise MailboxClosedError("the hub is closed")
        recipient = self._endpoints.get(message.recipient)
        if recipient is None:
            raise UnknownRecipientError(f"no identity {message.recipient!r} on this hub")
        check_route(self._endpoints[message.sender], recipient)
        data = encode(message, max_bytes=self.max_message_bytes)
        self._queues[message.recipient].put_nowait(data)
        self._messages += 1
        self._bytes += len(data)
        return message

    def now(self) -> float:
        """The hub's clock (seconds), used to stamp messages."""
        return self._clock()

    def _disconnect(self, identity: str) -> None:
        self._mailboxes.pop(identity, None)
        self._endpoints.pop(identity, None)
        self._queues[identity].put_nowait(_CLOSED)

    async def close(self) -> None:
        """Close the hub and every mailbox on it; idempotent."""
        self._closed = True
        for mailbox in list(self._mailboxes.values()):
            await mailbox.close()

    def statistics(self) -> HubStatistics:
        """Mailboxes, messages and bytes carried so far."""
        return HubStatistics(len(self._mailboxes), self._messages, self._bytes)


class MemoryMailbox:
    """One identity's mailbox on a :class:`MemoryHub` (implements ``Mailbox``)."""

    def __init__(self, hub: MemoryHub, identity: str) -> None:
        self._hub = hub
        self._identity = identity
        self._sequence = itertools.count(1)
        self._sent = 0
        self._received = 0
        self._closed = False

    @property
    def identity(self) -> str:
        return self._identity

    async def send(self, message: Message) -> Message:
        if self._closed:
            raise MailboxClosedError(f"mailbox {self._identity!r} is closed")
        stamped = message.with_updates(
            sender=self._identity, sequence=next(self._sequence), timestamp=self._hub.now()
        )
        self._hub._deliver(stamped)
        self._sent += 1
        return stamped

    async def receive(self, timeout: float | None = None) -> Message:
        if self._closed:
            raise MailboxClosedError(f"mailbox {self._identity!r} is closed")
        queue = self._hub._queues[self._identity]
        try:
            async with asyncio.timeout(timeout):  # wait_for could lose a cancellation (3.11)
                item = await queue.get()
        except TimeoutError:
            raise ReceiveTimeoutError(
                f"no message for {self._identity!r} within {timeout} s"
            ) from None
        if item is _CLOSED or not isinstance(item, bytes):
            queue.put_nowait(_CLOSED)  # wake any other waiter too
            raise MailboxClosedError(f"mailbox {self._identity!r} is closed")
        self._received += 1
        return decode(item, max_bytes=self._hub.max_message_bytes)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._hub._disconnect(self._identity)

    def statistics(self) -> MailboxStatistics:
        """What this mailbox has sent, received and has queued."""
        queued = 0 if self._closed else self._hub._queues[self._identity].qsize()
        return MailboxStatistics(
            identity=self._identity,
            sent=self._sent,
            received=self._received,
            queued=queued,
            closed=self._closed,
        )
