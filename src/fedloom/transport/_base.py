"""The Mailbox and Hub contracts.

A :class:`Mailbox` is one identity's connection to a hub, and the only thing protocols,
pods and modellers need from a transport. It has an in-memory implementation
(:mod:`fedloom.transport._memory`), a gRPC one and the worker's inter-process (proxy) one.
All of them pass :func:`fedloom.testing.check_mailbox`.

A :class:`Hub` hands out mailboxes and decides which routes it carries
(:mod:`fedloom.transport._routing`). The in-memory hub and the gRPC hub both pass
:func:`fedloom.testing.check_hub`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from fedloom.transport._routing import Role
from fedloom.wire import Message


@dataclass(frozen=True)
class MailboxStatistics:
    """Counters of one mailbox (STYLE: every queue-like thing has a statistics view)."""

    identity: str
    sent: int
    received: int
    queued: int
    closed: bool


@runtime_checkable
class Mailbox(Protocol):
    """One identity's end of the message service.

    Constraints:
        Messages between one sender and one recipient arrive in the order they were sent.
        ``send`` stamps ``sender`` (the mailbox's identity), ``sequence`` (strictly
        increasing per mailbox) and ``timestamp``; whatever the caller put there is replaced.
    """

    @property
    def identity(self) -> str:
        """The identity this mailbox sends as and receives for."""
        ...

    async def send(self, message: Message) -> Message:
        """Deliver ``message`` to ``message.recipient``; returns the stamped message.

        Raises:
            UnknownRecipientError: the recipient is not registered with the hub.
            MailboxClosedError: this mailbox (or its hub) was closed.
            WireError: the message cannot be encoded (bad body, bad tensor, too large).
        """
        ...

    async def receive(self, timeout: float | None = None) -> Message:
        """The next message addressed to this identity.

        Raises:
            ReceiveTimeoutError: nothing arrived within ``timeout`` seconds.
            MailboxClosedError: the mailbox was closed (also wakes a pending receive).
        """
        ...

    async def close(self) -> None:
        """Close the mailbox; idempotent. Pending and later receives raise MailboxClosedError."""
        ...

    def statistics(self) -> MailboxStatistics:
        """Counters for this mailbox."""
        ...


@runtime_checkable
class Hub(Protocol):
    """The message service: connects identities and carries what the routing rules allow.

    Constraints:
        A modeller's message reaches a pod only if the pod accepts that modeller, and a
        pod's message reaches a modeller only if the pod accepts it; pod to pod and
        modeller to modeller are never carried (:func:`fedloom.transport._routing.check_route`).
        A refused send raises in the sender's ``Mailbox.send`` and delivers nothing.
    """

    async def open_mailbox(
        self, identity: str, role: Role, *, accepts: Iterable[str] | None = None
    ) -> Mailbox:
        """Connect ``identity`` as a ``role``; a pod lists the modellers it ``accepts``.

        Raises:
            ConfigError: a bad identity or role, a pod without ``accepts`` or a modeller
                with them, or (in-memory) an identity that is already connected.
            UnknownIdentityError: a hub with registration does not know ``identity``.
            MailboxClosedError: the hub was closed.

        A mailbox from here raises, on ``send``:
            UnknownRecipientError: the recipient is not known to the hub.
            RouteRefusedError: the routing rules do not carry this pair.
        """
        ...

    async def close(self) -> None:
        """Stop the hub; idempotent. Mailboxes on it are closed or cut off."""
        ...
