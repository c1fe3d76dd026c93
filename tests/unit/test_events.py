"""The live-event stream: one Event type, subscribe/cancel, order, failing subscribers."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from fedloom._events import MODELLER, Event, EventKind, EventStream, fields_of, virtual_client
from fedloom.errors import ConfigError
from fedloom.testing._clock import FakeClock


def test_subscribers_get_every_event_in_order_stamped_by_the_clock() -> None:
    clock = FakeClock(100.0)
    stream = EventStream(clock)
    seen: list[tuple[str, Event]] = []
    stream.subscribe(lambda e: seen.append(("first", e)))
    stream.subscribe(lambda e: seen.append(("second", e)))
    stream.publish("t1", MODELLER, EventKind.TASK_STARTED, {"pods": ["a", "b"]})
    clock.advance(2.5)
    stream.publish("t1", "a", EventKind.PROGRESS, {"epoch": 1})
    assert [(who, e.kind, e.time) for who, e in seen] == [
        ("first", EventKind.TASK_STARTED, 100.0),
        ("second", EventKind.TASK_STARTED, 100.0),
        ("first", EventKind.PROGRESS, 102.5),
        ("second", EventKind.PROGRESS, 102.5),
    ]
    assert seen[2][1].participant == "a" and seen[2][1].fields["epoch"] == 1


def test_a_cancelled_subscription_gets_nothing_more() -> None:
    stream = EventStream(FakeClock())
    seen: list[EventKind] = []
    subscription = stream.subscribe(lambda e: seen.append(e.kind))
    stream.publish("t", MODELLER, EventKind.TASK_STARTED)
    subscription.cancel()
    subscription.cancel()  # twice is harmless
    stream.publish("t", MODELLER, EventKind.TASK_FINISHED)
    with stream.subscribe(lambda e: seen.append(e.kind)):
        stream.publish("t", MODELLER, EventKind.ROUND_STARTED)
    stream.publish("t", MODELLER, EventKind.ROUND_FINISHED)
    assert seen == [EventKind.TASK_STARTED, EventKind.ROUND_STARTED]
    assert stream.statistics().subscribers == 0


def test_a_failing_subscriber_is_logged_and_the_others_still_get_the_event(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = EventStream(FakeClock())
    seen: list[EventKind] = []

    def broken(event: Event) -> None:
        raise RuntimeError("the dashboard is down")

    stream.subscribe(broken)
    stream.subscribe(lambda e: seen.append(e.kind))
    with caplog.at_level(logging.ERROR, logger="fedloom._events"):
        stream.publish("t", MODELLER, EventKind.TASK_STARTED)
        stream.publish("t", MODELLER, EventKind.TASK_FINISHED)
    assert seen == [EventKind.TASK_STARTED, EventKind.TASK_FINISHED]
    assert "the dashboard is down" in caplog.text and "task_started" in caplog.text
    statistics = stream.statistics()
    assert (statistics.published, statistics.failed_deliveries) == (2, 2)


def test_keyboard_interrupt_in_a_subscriber_is_not_swallowed() -> None:
    stream = EventStream(FakeClock())

    def interrupted(event: Event) -> None:
        raise KeyboardInterrupt

    stream.subscribe(interrupted)
    with pytest.raises(KeyboardInterrupt):
        stream.publish("t", MODELLER, EventKind.TASK_STARTED)


def test_fields_are_frozen_json_values() -> None:
    source: dict[str, Any] = {"metrics": {"loss": 0.5}, "pods": ["a"], "nan": float("nan")}
    event = Event("t", MODELLER, EventKind.ROUND_FINISHED, source, 3.0)
    source["metrics"]["loss"] = 9.0  # the event keeps what it was given
    source["pods"].append("b")
    assert event.fields["metrics"]["loss"] == 0.5
    assert event.fields["pods"] == ("a",)
    with pytest.raises(TypeError):
        event.fields["pods"] = ()  # type: ignore[index]
    with pytest.raises(TypeError):
        event.fields["metrics"]["loss"] = 1.0
    as_json = json.loads(json.dumps(event.to_dict()))
    assert as_json["kind"] == "round_finished" and as_json["fields"]["pods"] == ["a"]
    assert as_json["fields"]["metrics"] == {"loss": 0.5}


@pytest.mark.parametrize(
    ("task", "participant", "kind", "fields", "match"),
    [
        ("", MODELLER, EventKind.PROGRESS, {}, "task"),
        ("t", "", EventKind.PROGRESS, {}, "participant"),
        ("t", MODELLER, "progress", {}, "EventKind"),
        ("t", MODELLER, EventKind.PROGRESS, {"blob": b"\x00"}, r"fields\.blob"),
        ("t", MODELLER, EventKind.PROGRESS, {1: "x"}, "not a string"),
        ("t", MODELLER, EventKind.PROGRESS, {"a": [object()]}, r"fields\.a\[0\]"),
    ],
)
def test_a_malformed_event_is_a_config_error(
    task: str, participant: str, kind: Any, fields: Any, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        Event(task, participant, kind, fields)


def test_a_malformed_event_reaches_no_subscriber() -> None:
    stream = EventStream(FakeClock())
    seen: list[Event] = []
    stream.subscribe(seen.append)
    with pytest.raises(ConfigError):
        stream.publish("t", MODELLER, EventKind.PROGRESS, {"blob": b"x"})
    assert seen == []
    with pytest.raises(ConfigError, match="callable"):
        stream.subscribe("print")  # type: ignore[arg-type]


def test_a_pods_body_keeps_only_its_json_part() -> None:
    body = {"epoch": 1, "blob": b"\x00", 7: "seven", "nested": {"ok": [1, 2]}}
    assert fields_of(body) == {"epoch": 1, "nested": {"ok": (1, 2)}}
    assert fields_of(None) == {} and fields_of([1, 2]) == {}
    assert virtual_client(3) == "client-3"
