"""The Mailbox contract: one identity's connection to a hub.

A :class:`Mailbox` is the only thing protocols, pods and modellers need from a transport.
It has an in-memory implementation (:mod:`fedloom.transport.memory`) and, in later
layers, gRPC and inter-process (proxy) implementations. All of them pass
:func:`fedloom.testing.check_mailbox`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

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
