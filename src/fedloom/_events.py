r"""The live-event stream: what is happening in a task, as it happens.

Every running part of fedloom tells the people watching it what it does through one type,
:class:`Event` (task, participant, kind, fields, time), delivered to the subscribers of an
:class:`EventStream`:

- a :class:`~fedloom.modeller.Modeller` (``Modeller.subscribe``): the task's start, each
  pod's status messages (PROGRESS bodies, batch counts, batch ids, preparing data...), each
  finished round, pods that rejected or left the task, and the task's end;
- a :class:`~fedloom.simulation.Simulation` (``Simulation.subscribe``): the workers being
  ready, each round's start, each virtual client's update, each round's end, the end;
- a :class:`~fedloom.pod.Pod` (``Pod.subscribe``): each task it accepts, rejects, starts,
  finishes or aborts.

The command line's progress bars (``fedloom run``, ``fedloom simulate``) are one renderer
on this stream (:mod:`fedloom.cli._progress`), and the dashboard subscribes to it too.

The contract a subscriber can rely on:

- Events reach each subscriber in the order they were published, on the publisher's
  thread (the engine thread of a simulation, the event loop of a modeller or pod), in the
  order the subscribers subscribed. A subscriber must return promptly: it runs inside the
  task.
- A subscriber that raises does not break the run, nor the other subscribers: the error
  is logged (with its traceback) and counted (:meth:`EventStream.statistics`), and
  delivery goes on. Only ``BaseException``\ s that are not ``Exception``\ s (Ctrl-C,
  ``SystemExit``) propagate.
- An event is frozen and its fields are JSON values (None, bool, int, float, str, and
  lists and string-keyed mappings of them), read-only (mappings become
  ``MappingProxyType``, lists tuples), so a subscriber may keep events, hand them to
  another thread or serialise them (:meth:`Event.to_dict`).
- ``time`` is the publishing stream's clock (``time.time`` unless one is injected).

Which fields each kind carries is documented on :class:`EventKind`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from fedloom.errors import ConfigError

__all__ = [
    "MODELLER",
    "Event",
    "EventCallback",
    "EventKind",
    "EventStream",
    "EventStreamStatistics",
    "Subscription",
    "fields_of",
    "virtual_client",
]

logger = logging.getLogger(__name__)

MODELLER = "modeller"
"""The participant of events about the task as a whole (the modeller's side of a task, or
a simulation's engine, which plays the modeller for its virtual clients)."""


def virtual_client(client: int) -> str:
    """The participant name of a simulation's virtual client ``client`` (``"client-3"``)."""
    return f"client-{client}"


class EventKind(StrEnum):
    """What happened.

    The fields each kind carries (more may be added, never removed):

    Task life (participant :data:`MODELLER` on a modeller or simulation, the pod's name on
    a pod):

    - ``TASK_STARTED``: modeller: ``protocol``, ``pods`` (the pods asked); simulation:
      ``rounds``, ``clients`` (how many), ``startup_seconds`` (workers ready); pod:
      ``protocol``, ``modeller`` (the task holds a slot and its worker starts).
    - ``TASK_ACCEPTED`` / ``TASK_REJECTED`` (pod): ``protocol``, ``modeller``;
      rejected adds ``reason`` and ``message``.
    - ``TASK_FINISHED``: modeller: ``seconds``, ``accepted``, ``rejected``, ``aborted``
      (pod lists); simulation: ``rounds`` (how many ran), ``stopped``; pod: ``protocol``,
      ``seconds``.
    - ``TASK_ABORTED``: the task ended without its result: ``reason`` (an
      :class:`~fedloom.errors.AbortReason` value, or the error's type on a modeller or
      simulation), ``message``; a pod adds ``protocol``, ``seconds``.

    Rounds (participant :data:`MODELLER`):

    - ``ROUND_STARTED`` (simulation): ``round`` (from 0), ``clients`` (how many sampled).
    - ``ROUND_FINISHED``: ``round`` and ``metrics`` (the aggregated metrics); a modeller
      adds the protocol's round summary (FedAvg: ``pods``, ``aggregated``, ``per_pod``,
      ``rejected``, ``seconds``).

    Participants (participant: the pod, or :func:`virtual_client`):

    - ``PARTICIPANT_DONE`` (simulation): ``round``, ``client``, ``done`` and ``total``
      (clients of the round in so far, of how many), ``metrics`` (its training metrics).
    - ``PARTICIPANT_REJECTED`` (modeller): the pod refused the task: ``reason``,
      ``message``.
    - ``PARTICIPANT_FAILED`` (modeller): the pod left the task after accepting it (it
      aborted, or the modeller dropped it): ``reason``, ``message``.
    - ``PROGRESS`` (modeller): a PROGRESS body from the pod's worker, as sent (the
      progress hook's ``round``, ``epoch``, ``epochs``, ``batch``, ``batches``, ``step``,
      ``steps``; a queued task's ``state``, ``position``).
    - ``BATCH_COUNT`` (modeller): ``count``, the pod's number of batches (-1: not known yet).
    - ``BATCH_STARTED`` (modeller): ``batch``, the batch the pod works on (from 1).
    - ``STATUS`` (modeller): ``status``, another state the pod reports:
      ``"preparing_data"``, ``"configuring_task"`` or ``"heartbeat"``.
    """

    TASK_STARTED = "task_started"
    TASK_ACCEPTED = "task_accepted"
    TASK_REJECTED = "task_rejected"
    TASK_FINISHED = "task_finished"
    TASK_ABORTED = "task_aborted"
    ROUND_STARTED = "round_started"
    ROUND_FINISHED = "round_finished"
    PARTICIPANT_DONE = "participant_done"
    PARTICIPANT_REJECTED = "participant_rejected"
    PARTICIPANT_FAILED = "participant_failed"
    PROGRESS = "progress"
    BATCH_COUNT = "batch_count"
    BATCH_STARTED = "batch_started"
    STATUS = "status"


@dataclass(frozen=True)
class Event:
    """One thing that happened in a task (see the module docstring).

    Build events with :meth:`EventStream.publish`, which stamps them with the stream's
    clock; constructing one directly (a test, a renderer fed by hand) freezes ``fields``
    the same way.

    Raises:
        ConfigError: an empty ``task`` or ``participant``, a ``kind`` that is not an
            :class:`EventKind`, or ``fields`` that are not JSON values (see the module
            docstring) under string keys.
    """

    task: str
    participant: str
    kind: EventKind
    fields: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    time: float = 0.0

    def __post_init__(self) -> None:
        for name in ("task", "participant"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"an event's {name} must be a non-empty string, got {value!r}")
        if not isinstance(self.kind, EventKind):
            raise ConfigError(f"an event's kind must be an EventKind, got {self.kind!r}")
        if not isinstance(self.fields, Mapping):
            raise ConfigError(f"an event's fields must be a mapping, got {self.fields!r}")
        object.__setattr__(self, "fields", _frozen(self.fields, "fields"))

    def to_dict(self) -> dict[str, Any]:
        """The event as plain JSON values (``kind`` as its string value)."""
        return {
            "task": self.task,
            "participant": self.participant,
            "kind": self.kind.value,
            "fields": _thawed(self.fields),
            "time": self.time,
        }


def _frozen(value: Any, where: str) -> Any:
    """``value`` as read-only JSON values; a ConfigError names where it is not JSON."""
    # floats stay floats even when NaN: a diverged loss is worth showing, not refusing
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        items: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"event {where} have a key that is not a string: {key!r}")
            items[key] = _frozen(item, f"{where}.{key}")
        return MappingProxyType(items)
    if isinstance(value, list | tuple):
        return tuple(_frozen(item, f"{where}[{i}]") for i, item in enumerate(value))
    raise ConfigError(f"event {where} is not a JSON value: {type(value).__name__}")


def _thawed(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _thawed(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_thawed(item) for item in value]
    return value


EventCallback = Callable[[Event], None]
"""A subscriber: called with each event (see the module docstring for the contract)."""


@dataclass(frozen=True)
class EventStreamStatistics:
    """Counters of an :class:`EventStream`."""

    subscribers: int
    published: int
    failed_deliveries: int
    """Calls of a subscriber that raised (each logged, none stopped the run)."""


class Subscription:
    """What :meth:`EventStream.subscribe` returns: the handle that ends the subscription.

    Call :meth:`cancel` (or leave the ``with`` block) to stop receiving events. Cancelling
    twice is harmless.
    """

    def __init__(self, stream: EventStream, callback: EventCallback) -> None:
        self._stream = stream
        self.callback = callback

    def cancel(self) -> None:
        self._stream._remove(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cancel()


class EventStream:
    """Delivers published events to its subscribers (see the module docstring).

    Thread-safe: subscribers may come and go from any thread while events are published.

    Args:
        clock: gives each event's ``time`` (seconds; ``time.time`` by default).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._subscriptions: tuple[Subscription, ...] = ()
        self._lock = threading.Lock()
        self._published = 0
        self._failed = 0

    def subscribe(self, callback: EventCallback) -> Subscription:
        """Deliver every event published from now on to ``callback``.

        Raises:
            ConfigError: ``callback`` is not callable.
        """
        if not callable(callback):
            raise ConfigError(f"an event subscriber must be callable, got {callback!r}")
        subscription = Subscription(self, callback)
        with self._lock:
            self._subscriptions = (*self._subscriptions, subscription)
        return subscription

    def _remove(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscriptions = tuple(s for s in self._subscriptions if s is not subscription)

    def publish(
        self,
        task: str,
        participant: str,
        kind: EventKind,
        fields: Mapping[str, Any] | None = None,
    ) -> Event | None:
        """Stamp an event with the clock, deliver it to every subscriber, and return it.

        An event nobody subscribed to is counted but not built (None): a simulation
        publishes one per virtual client, and freezing its fields would cost each round.

        Raises:
            ConfigError: as :class:`Event` (nothing is delivered then).
        """
        if not self._subscriptions:
            with self._lock:
                self._published += 1
            return None
        event = Event(task, participant, kind, fields or {}, self._clock())
        self.deliver(event)
        return event

    def deliver(self, event: Event) -> None:
        """Deliver an already built ``event`` (e.g. one relayed from another stream)."""
        with self._lock:
            subscriptions = self._subscriptions
            self._published += 1
        for subscription in subscriptions:
            try:
                subscription.callback(event)
            except Exception:
                with self._lock:
                    self._failed += 1
                logger.exception(
                    "an event subscriber (%r) failed on %s of task %s; delivery goes on",
                    subscription.callback,
                    event.kind.value,
                    event.task,
                )

    def statistics(self) -> EventStreamStatistics:
        """How many subscribers, events published and deliveries that failed."""
        with self._lock:
            return EventStreamStatistics(len(self._subscriptions), self._published, self._failed)


def fields_of(body: object) -> dict[str, Any]:
    """The JSON-valued part of a message body, as event fields.

    What a pod sends is its own choice: keys that are not strings and values that are not
    JSON (msgpack's bytes, say) are left out rather than lose the whole event.
    """
    if not isinstance(body, Mapping):
        return {}
    kept: dict[str, Any] = {}
    for key, value in body.items():
        if not isinstance(key, str):
            continue
        try:
            kept[key] = _frozen(value, key)
        except ConfigError:
            continue
    return kept
