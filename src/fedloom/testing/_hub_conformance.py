"""Conformance suite for the :class:`~fedloom.transport.Hub` contract.

Every hub (in memory, gRPC) must pass :func:`check_hub`, routing rules included: what a
deployment refuses, a run in one process must refuse too. The factory is given the
identities a check will connect and their roles (a hub with registration registers them)
and returns a fresh hub that knows nobody else.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Mapping

from fedloom.errors import ReceiveTimeoutError, RouteRefusedError, UnknownRecipientError
from fedloom.testing._mailbox_conformance import check_mailbox
from fedloom.transport import Hub, Mailbox, Role
from fedloom.wire import Message, MessageType

HubFactory = Callable[[Mapping[str, Role]], Awaitable[Hub]]

IDENTITIES: Mapping[str, Role] = {
    "modeller-a": "modeller",
    "modeller-b": "modeller",
    "pod-a": "pod",
    "pod-b": "pod",
}
"""Who each check may connect: pods accept ``modeller-a`` only."""
ACCEPTS = ["modeller-a"]
_QUIET_SECONDS = 0.3  # how long a check listens to be sure a refused message never came


def _message(recipient: str, index: int = 0) -> Message:
    return Message(MessageType.PROGRESS, "", recipient, "task-1", body={"index": index})


class _Federation:
    """One fresh hub and every identity of :data:`IDENTITIES` connected to it."""

    def __init__(self, hub: Hub, mailboxes: dict[str, Mailbox]) -> None:
        self.hub = hub
        self.mailboxes = mailboxes

    def __getitem__(self, name: str) -> Mailbox:
        return self.mailboxes[name]

    async def close(self) -> None:
        for mailbox in self.mailboxes.values():
            await mailbox.close()
        await self.hub.close()


async def _federation(factory: HubFactory) -> _Federation:
    hub = await factory(IDENTITIES)
    mailboxes: dict[str, Mailbox] = {}
    for name, role in IDENTITIES.items():
        accepts = ACCEPTS if role == "pod" else None
        mailboxes[name] = await hub.open_mailbox(name, role, accepts=accepts)
    return _Federation(hub, mailboxes)


async def _assert_refused(
    federation: _Federation, sender: str, recipient: str, error: type[Exception]
) -> None:
    try:
        await federation[sender].send(_message(recipient, 666))
    except error:
        pass
    else:
        raise AssertionError(f"{sender} -> {recipient} must raise {error.__name__}")
    if recipient in federation.mailboxes:
        try:
            got = await federation[recipient].receive(timeout=_QUIET_SECONDS)
        except ReceiveTimeoutError:
            return
        raise AssertionError(f"a refused message reached {recipient}: {got!r}")


async def _carries_accepted_routes(federation: _Federation) -> None:
    await federation["modeller-a"].send(_message("pod-a", 1))
    got = await federation["pod-a"].receive(timeout=5)
    assert got.sender == "modeller-a" and got.body == {"index": 1}
    await federation["pod-a"].send(_message("modeller-a", 2))
    got = await federation["modeller-a"].receive(timeout=5)
    assert got.sender == "pod-a" and got.body == {"index": 2}


async def _refuses_pod_to_pod(federation: _Federation) -> None:
    await _assert_refused(federation, "pod-a", "pod-b", RouteRefusedError)


async def _refuses_modeller_to_modeller(federation: _Federation) -> None:
    await _assert_refused(federation, "modeller-a", "modeller-b", RouteRefusedError)


async def _refuses_an_unaccepted_modeller(federation: _Federation) -> None:
    await _assert_refused(federation, "modeller-b", "pod-a", RouteRefusedError)


async def _refuses_a_pod_writing_to_a_modeller_it_does_not_accept(
    federation: _Federation,
) -> None:
    await _assert_refused(federation, "pod-a", "modeller-b", RouteRefusedError)


async def _refuses_an_unknown_recipient(federation: _Federation) -> None:
    await _assert_refused(federation, "modeller-a", "nobody-by-this-name", UnknownRecipientError)


async def _a_refusal_disturbs_nothing(federation: _Federation) -> None:
    for sender, recipient in (("pod-a", "pod-b"), ("modeller-b", "pod-a")):
        with contextlib.suppress(RouteRefusedError):
            await federation[sender].send(_message(recipient))
    await federation["modeller-a"].send(_message("pod-a", 3))
    await federation["pod-a"].send(_message("modeller-a", 4))
    assert (await federation["pod-a"].receive(timeout=5)).body == {"index": 3}
    assert (await federation["modeller-a"].receive(timeout=5)).body == {"index": 4}


CHECKS = (
    _carries_accepted_routes,
    _refuses_pod_to_pod,
    _refuses_modeller_to_modeller,
    _refuses_an_unaccepted_modeller,
    _refuses_a_pod_writing_to_a_modeller_it_does_not_accept,
    _refuses_an_unknown_recipient,
    _a_refusal_disturbs_nothing,
)


async def check_hub(factory: HubFactory) -> None:
    """Check a hub: every routing check, each on a fresh hub, then :func:`check_mailbox`.

    :func:`check_mailbox` runs on a modeller and a pod that accepts it.

    Raises:
        AssertionError: naming the check that failed.
    """
    for check in CHECKS:
        federation = await _federation(factory)
        try:
            await check(federation)
        except AssertionError as exc:
            raise AssertionError(f"{check.__name__.strip('_')}: {exc}") from exc
        except Exception as exc:  # a refusal where a delivery was due fails the check too
            name = check.__name__.strip("_")
            raise AssertionError(f"{name}: {type(exc).__name__}: {exc}") from exc
        finally:
            await federation.close()
    hubs: list[Hub] = []

    async def pair() -> tuple[Mailbox, Mailbox]:
        hub = await factory({"alice": "modeller", "bob": "pod"})
        hubs.append(hub)
        alice = await hub.open_mailbox("alice", "modeller")
        return alice, await hub.open_mailbox("bob", "pod", accepts=["alice"])

    try:
        await check_mailbox(pair)
    finally:
        for hub in hubs:
            await hub.close()
