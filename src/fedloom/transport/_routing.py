"""Who may send to whom: the routing rules every hub enforces, written once.

The gRPC hub (:mod:`fedloom.hub._server`) and the in-memory hub
(:mod:`fedloom.transport._memory`) both ask :func:`check_route` before they store a
message, so a run in one process is refused exactly what a deployment refuses.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

from fedloom.errors import ConfigError, RouteRefusedError

Role = Literal["pod", "modeller"]
ROLES: Final[tuple[Role, ...]] = ("pod", "modeller")
"""The roles an identity can have on a hub."""


@dataclass(frozen=True)
class Endpoint:
    """One side of a route: an identity, its role, and (pods) the modellers it accepts.

    ``accepts`` is None for modellers, and for a pod whose list the hub does not know yet
    (it has never connected): such a pod is not restricted until it says whom it accepts.
    """

    name: str
    role: Role
    accepts: frozenset[str] | None = None


def parse_role(value: str) -> Role:
    """``value`` as a :data:`Role`.

    Raises:
        ConfigError: ``value`` is not one of :data:`ROLES`.
    """
    if value not in ROLES:
        raise ConfigError(f"hub role must be one of {', '.join(ROLES)}, got {value!r}")
    return value


def accepts_of(role: Role, accepts: Iterable[str] | None) -> frozenset[str] | None:
    """The accepts list an identity of ``role`` connects with, checked.

    Raises:
        ConfigError: a pod that lists no accepts, or a modeller that lists some (only
            pods choose whom they talk to).
    """
    if role == "modeller":
        if accepts is not None:
            raise ConfigError("only a pod says which modellers it accepts, not a modeller")
        return None
    if accepts is None or isinstance(accepts, str):
        raise ConfigError("a pod must list the modellers it accepts (a list of names)")
    return frozenset(accepts)


def pod_accepts(pod: Endpoint, modeller: str) -> bool:
    """Whether ``pod`` talks to ``modeller`` (True while its list is not known)."""
    return pod.accepts is None or modeller in pod.accepts


def check_route(sender: Endpoint, recipient: Endpoint) -> None:
    """Refuse a message the hub must not carry from ``sender`` to ``recipient``.

    A modeller may write to a pod that accepts it and a pod to a modeller it accepts;
    nothing else is carried.

    Raises:
        RouteRefusedError: both have the same role (pod to pod, modeller to modeller), or
            the pod of the pair does not accept the modeller.
    """
    if sender.role == recipient.role:
        raise RouteRefusedError(
            f"a {sender.role} cannot send to another {sender.role} "
            f"({sender.name!r} to {recipient.name!r})"
        )
    pod, modeller = (sender, recipient) if sender.role == "pod" else (recipient, sender)
    if not pod_accepts(pod, modeller.name):
        raise RouteRefusedError(f"pod {pod.name!r} does not accept modeller {modeller.name!r}")


__all__ = ["ROLES", "Endpoint", "Role", "accepts_of", "check_route", "parse_role", "pod_accepts"]
