"""What pods told a modeller, read from its events, as the integration tests check it."""

from __future__ import annotations

from typing import Any

from fedloom._events import MODELLER, Event, EventKind


def said(event: Event) -> str:
    """What a pod's event says: its status (``"preparing_data"``), else its kind's value
    (``"progress"``, ``"batch_count"``, ``"batch_started"``)."""
    return str(event.fields["status"]) if event.kind is EventKind.STATUS else event.kind.value


class PodEvents:
    """A subscriber keeping ``(pod, what, fields)`` for each event of a pod (see :func:`said`)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, Any]]] = []

    def __call__(self, event: Event) -> None:
        if event.participant != MODELLER:
            self.seen.append((event.participant, said(event), dict(event.fields)))

    def of(self, what: str) -> list[tuple[str, dict[str, Any]]]:
        """``(pod, fields)`` of the events that say ``what``."""
        return [(pod, fields) for pod, said_, fields in self.seen if said_ == what]
