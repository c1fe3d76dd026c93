"""Conformance suite for the :class:`~fedloom.transport.Mailbox` contract.

Every mailbox implementation (memory, gRPC, the worker's proxy mailbox) must pass
:func:`check_mailbox`. The factory returns two mailboxes, identities ``"alice"`` and
``"bob"``, connected to one fresh hub and to nothing else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import numpy as np

from fedloom.errors import (
    MailboxClosedError,
    ReceiveTimeoutError,
    UnknownRecipientError,
    WireError,
)
from fedloom.transport import Mailbox
from fedloom.wire import Message, MessageType

MailboxPairFactory = Callable[[], Awaitable[tuple[Mailbox, Mailbox]]]


def _message(recipient: str, index: int = 0, **tensors: np.ndarray) -> Message:
    return Message(
        MessageType.PROGRESS,
        "someone-else",
        recipient,
        "task-1",
        sequence=999,
        body={"index": index, "nested": [1, "two", None]},
        tensors=tensors,
    )


async def _delivers_body_and_tensors(alice: Mailbox, bob: Mailbox) -> None:
    weights = np.arange(12, dtype=np.float32).reshape(3, 4)
    sent = await alice.send(_message("bob", weights=weights))
    received = await bob.receive(timeout=5)
    assert received.type is MessageType.PROGRESS
    assert received.sender == "alice", "send must stamp the sender's identity"
    assert received.recipient == "bob" and received.task_id == "task-1"
    assert received.body == {"index": 0, "nested": [1, "two", None]}
    assert set(received.tensors) == {"weights"}
    assert np.array_equal(received.tensors["weights"], weights)
    assert received.tensors["weights"].dtype == np.float32
    assert received.sequence == sent.sequence and sent.sequence != 999
    assert received.timestamp > 0


async def _keeps_order_and_sequences(alice: Mailbox, bob: Mailbox) -> None:
    for index in range(50):
        await alice.send(_message("bob", index))
    received = [await bob.receive(timeout=5) for _ in range(50)]
    assert [m.body["index"] for m in received if isinstance(m.body, dict)] == list(range(50))
    sequences = [m.sequence for m in received]
    assert sequences == sorted(sequences) and len(set(sequences)) == 50, "sequences must increase"


async def _times_out(alice: Mailbox, bob: Mailbox) -> None:
    started = time.monotonic()
    try:
        await bob.receive(timeout=0.05)
    except ReceiveTimeoutError:
        pass
    else:
        raise AssertionError("receive on an empty mailbox must time out")
    assert time.monotonic() - started < 5, "the time-out took far too long"


async def _refuses_unknown_recipient_and_bad_bodies(alice: Mailbox, bob: Mailbox) -> None:
    for bad, error in (
        (_message("nobody-by-this-name"), UnknownRecipientError),
        (_message("bob").with_updates(body={"not msgpack": {1, 2}}), WireError),
        (_message("bob", bad=np.array([object()])), WireError),
    ):
        try:
            await alice.send(bad)
        except error:
            continue
        raise AssertionError(f"sending {bad!r} must raise {error.__name__}")
    await alice.send(_message("bob", 7))
    assert (await bob.receive(timeout=5)).body == {"index": 7, "nested": [1, "two", None]}, (
        "a refused send must not disturb later messages"
    )


async def _close_wakes_and_refuses(alice: Mailbox, bob: Mailbox) -> None:
    pending = asyncio.ensure_future(bob.receive())
    await asyncio.sleep(0.01)
    await bob.close()
    try:
        await asyncio.wait_for(pending, 5)
    except MailboxClosedError:
        pass
    else:
        raise AssertionError("close must wake a pending receive with MailboxClosedError")
    await bob.close()  # idempotent
    for attempt in (bob.receive(timeout=0.1), bob.send(_message("alice"))):
        try:
            await attempt
        except MailboxClosedError:
            continue
        raise AssertionError("a closed mailbox must refuse send and receive")
    stats = bob.statistics()
    assert stats.closed and stats.identity == "bob"


async def _counts(alice: Mailbox, bob: Mailbox) -> None:
    for index in range(3):
        await alice.send(_message("bob", index))
    await bob.receive(timeout=5)
    assert alice.statistics().sent == 3
    assert bob.statistics().received == 1
    # a remote mailbox learns of queued messages as the hub streams them: allow it a moment
    deadline = time.monotonic() + 5
    while bob.statistics().queued != 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert bob.statistics().queued == 2


CHECKS = (
    _delivers_body_and_tensors,
    _keeps_order_and_sequences,
    _times_out,
    _refuses_unknown_recipient_and_bad_bodies,
    _counts,
    _close_wakes_and_refuses,
)


async def check_mailbox(factory: MailboxPairFactory) -> None:
    """Run every contract check, each on a fresh pair from ``factory``.

    Raises:
        AssertionError: naming the check that failed.
    """
    for check in CHECKS:
        alice, bob = await factory()
        try:
            await check(alice, bob)
        except AssertionError as exc:
            raise AssertionError(f"{check.__name__.strip('_')}: {exc}") from exc
        finally:
            await alice.close()
            await bob.close()
