"""The Modeller and the Pod deliver a task's life as events (in-memory federation)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from fedloom import FedAvg, LocalFederation, ModelSpec, TrainingConfig
from fedloom._events import MODELLER, Event, EventKind
from fedloom.errors import AccessDeniedError, ErrorReport, PodResponseError
from fedloom.pod import ArraySource, PodPolicy, PodStatistics

ROUNDS = 2


def pods() -> dict[str, ArraySource]:
    rng = np.random.default_rng(5)
    made = {}
    for name in ("pod-a", "pod-b"):
        x = rng.normal(size=(40, 3)).astype(np.float32)
        made[name] = ArraySource(x, (x[:, 0] > 0).astype(np.int64))
    return made


def fedavg() -> FedAvg:
    return FedAvg(
        model=ModelSpec("mlp", {"in_features": 3, "hidden": [4], "out_features": 2}),
        rounds=ROUNDS,
        training=TrainingConfig(epochs=1, batch_size=10),
    )


async def run(
    federation_pods: dict[str, ArraySource], **options: object
) -> tuple[list[Event], dict[str, list[Event]], dict[str, PodStatistics], object]:
    """Run FedAvg; the modeller's events, each pod's, each pod's statistics, the result."""
    modeller_events: list[Event] = []
    pod_events: dict[str, list[Event]] = {name: [] for name in federation_pods}

    async with LocalFederation(federation_pods, **options) as federation:  # type: ignore[arg-type]
        federation.modeller.subscribe(modeller_events.append)
        for name, pod in federation.pods.items():
            pod.subscribe(pod_events[name].append)
        try:
            outcome: object = await federation.run(fedavg())
        except PodResponseError as exc:
            outcome = exc
        for pod in federation.pods.values():  # the pods end a moment after the modeller
            while pod.running_tasks() or pod.queued_tasks():
                await asyncio.sleep(0)
        await asyncio.sleep(0)
        statistics = {name: pod.statistics() for name, pod in federation.pods.items()}
    return modeller_events, pod_events, statistics, outcome


async def test_the_modeller_delivers_a_fedavg_task_from_start_to_finish() -> None:
    events, _, _, result = await run(pods())
    task_id = result.task_id  # type: ignore[attr-defined]
    assert {event.task for event in events} == {task_id}
    assert events[0].kind is EventKind.TASK_STARTED and events[0].participant == MODELLER
    assert events[0].fields == {"protocol": "fedavg", "pods": ("pod-a", "pod-b")}
    assert events[-1].kind is EventKind.TASK_FINISHED
    assert events[-1].fields["accepted"] == ("pod-a", "pod-b")
    assert events[-1].fields["aborted"] == () and events[-1].fields["seconds"] > 0
    rounds = [e for e in events if e.kind is EventKind.ROUND_FINISHED]
    assert [e.fields["round"] for e in rounds] == list(range(ROUNDS))
    assert rounds[0].fields["pods"] == ("pod-a", "pod-b")
    assert rounds[0].fields["metrics"] == rounds[0].fields["aggregated"]
    assert "train_loss" in rounds[0].fields["metrics"]
    for pod in ("pod-a", "pod-b"):
        said = [e.fields.get("status", e.kind.value) for e in events if e.participant == pod]
        assert said[:3] == ["preparing_data", "configuring_task", "batch_count"]
        progress = [e for e in events if e.participant == pod and e.kind is EventKind.PROGRESS]
        assert progress and all("epoch" in e.fields for e in progress)
        # a pod's progress of round 1 comes after the modeller finished round 0
        first_of_round_1 = next(e for e in progress if e.fields["round"] == 1)
        assert events.index(rounds[0]) < events.index(first_of_round_1)
    assert [e.time for e in events] == sorted(e.time for e in events)


async def test_each_pod_delivers_accept_start_and_finish() -> None:
    _, pod_events, statistics, result = await run(pods())
    for pod, events in pod_events.items():
        assert [e.kind for e in events] == [
            EventKind.TASK_ACCEPTED,
            EventKind.TASK_STARTED,
            EventKind.TASK_FINISHED,
        ]
        assert {e.task for e in events} == {result.task_id}  # type: ignore[attr-defined]
        assert {e.participant for e in events} == {pod}
        assert events[0].fields == {"protocol": "fedavg", "modeller": "modeller"}
        assert events[-1].fields["seconds"] >= 0
        assert statistics[pod] == PodStatistics((), (), 1, 0, 1, 0)


async def test_a_rejecting_pod_and_the_failed_task_are_events_on_both_sides() -> None:
    closed = PodPolicy(allowed_protocols=frozenset({"analytics"}))
    events, pod_events, statistics, outcome = await run(pods(), policies={"pod-b": closed})
    assert isinstance(outcome, PodResponseError)
    assert events[-1].kind is EventKind.TASK_ABORTED
    assert events[-1].fields["reason"] == "PodResponseError"
    assert [e.kind for e in pod_events["pod-b"]] == [EventKind.TASK_REJECTED]
    denied = ErrorReport.from_exception(AccessDeniedError("not allowed")).reason.value
    assert pod_events["pod-b"][0].fields["reason"] == denied
    assert pod_events["pod-a"][0].kind is EventKind.TASK_ACCEPTED
    assert pod_events["pod-a"][-1].kind is EventKind.TASK_ABORTED
    assert statistics["pod-b"].rejected == 1 and statistics["pod-a"].aborted == 1


async def test_a_failing_subscriber_does_not_break_the_task() -> None:
    def broken(event: Event) -> None:
        raise RuntimeError("a broken dashboard")

    async with LocalFederation(pods()) as federation:
        federation.modeller.subscribe(broken)
        federation.pods["pod-a"].subscribe(broken)
        result = await federation.run(fedavg())
        assert federation.modeller.events.statistics().failed_deliveries > ROUNDS
    assert len(result.result.history) == ROUNDS  # type: ignore[attr-defined]


@pytest.mark.parametrize("kind", list(EventKind))
def test_every_kind_is_documented(kind: EventKind) -> None:
    assert f"``{kind.name}``" in (EventKind.__doc__ or "")
