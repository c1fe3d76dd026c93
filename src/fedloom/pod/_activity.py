"""What happens to a pod's tasks, for people watching it: events and statistics.

:class:`PodActivity` publishes a pod's task events on its
:class:`~fedloom._events.EventStream` and counts them for :class:`PodStatistics`.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedloom._events import EventCallback, EventKind, EventStream, Subscription

__all__ = ["PodActivity", "PodStatistics"]

_COUNTED = (
    EventKind.TASK_ACCEPTED,
    EventKind.TASK_REJECTED,
    EventKind.TASK_FINISHED,
    EventKind.TASK_ABORTED,
)


@dataclass(frozen=True)
class PodStatistics:
    """A pod's tasks now, and its task counts since it started.

    Those holding a slot and those waiting (by id), and how many it accepted, rejected,
    finished and aborted since it started.
    """

    running: tuple[str, ...]
    queued: tuple[str, ...]
    accepted: int
    rejected: int
    finished: int
    aborted: int


class PodActivity:
    """One pod's task events (see :meth:`fedloom.pod.Pod.subscribe`) and their counts."""

    def __init__(self, pod: str, events: EventStream | None = None) -> None:
        self.pod = pod
        self.events = events if events is not None else EventStream()
        self._counts = dict.fromkeys(_COUNTED, 0)

    def subscribe(self, callback: EventCallback) -> Subscription:
        return self.events.subscribe(callback)

    def publish(self, task_id: str, kind: EventKind, fields: dict[str, str | float]) -> None:
        if kind in self._counts:
            self._counts[kind] += 1
        self.events.publish(task_id or "?", self.pod, kind, fields)

    def statistics(self, running: list[str], queued: list[str]) -> PodStatistics:
        counts = self._counts
        return PodStatistics(
            running=tuple(running),
            queued=tuple(queued),
            accepted=counts[EventKind.TASK_ACCEPTED],
            rejected=counts[EventKind.TASK_REJECTED],
            finished=counts[EventKind.TASK_FINISHED],
            aborted=counts[EventKind.TASK_ABORTED],
        )
