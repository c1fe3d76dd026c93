"""Wiring a star of one modeller and its pods onto an in-memory hub, for tests."""

from __future__ import annotations

from collections.abc import Iterable

from fedloom.transport import MemoryHub, MemoryMailbox


def connect_federation(
    hub: MemoryHub, modeller: str, pods: Iterable[str]
) -> dict[str, MemoryMailbox]:
    """Connect ``modeller`` and each pod (accepting that modeller); the modeller first.

    Raises:
        ConfigError: a name is empty or connected twice.
    """
    mailboxes = {modeller: hub.connect(modeller, "modeller")}
    for pod in pods:
        mailboxes[pod] = hub.connect(pod, "pod", accepts=[modeller])
    return mailboxes
