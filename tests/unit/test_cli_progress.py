"""The command line's one progress renderer, fed with events (fedloom run, fedloom simulate)."""

from __future__ import annotations

import io
import threading
from typing import Any

from rich.console import Console

from fedloom._events import MODELLER, Event, EventKind, virtual_client
from fedloom.cli._progress import LiveProgress, progress_label

TASK = "task-1"


def pod_event(pod: str, kind: EventKind, **fields: Any) -> Event:
    return Event(TASK, pod, kind, fields)


def task_event(kind: EventKind, **fields: Any) -> Event:
    return Event(TASK, MODELLER, kind, fields)


def test_batches_drive_each_bar_and_the_slowest_pod() -> None:
    console = Console(file=io.StringIO(), force_terminal=False, width=120)
    with LiveProgress(console, ["pod-a", "pod-b"]) as progress:
        progress.on_event(pod_event("pod-a", EventKind.BATCH_COUNT, count=4))
        progress.on_event(pod_event("pod-b", EventKind.BATCH_COUNT, count=2))
        progress.on_event(pod_event("pod-a", EventKind.BATCH_STARTED, batch=3))
        progress.on_event(pod_event("pod-b", EventKind.BATCH_STARTED, batch=2))
        tasks = {task.description: task for task in progress._progress.tasks}
        assert tasks["slowest pod"].completed == 50  # pod-a: 2 of 4, pod-b: 1 of 2
        assert tasks["pod-a: batch 3/4"].total == 4
        progress.on_event(pod_event("pod-b", EventKind.PROGRESS, epoch=1, batch=5))
        assert any("epoch 2, batch 6" in task.description for task in progress._progress.tasks)
        progress.on_event(pod_event("nobody", EventKind.PROGRESS, epoch=9))  # ignored
        assert not any("nobody" in task.description for task in progress._progress.tasks)


HOSTILE = ["[/x]", "[bold", "[/]", "[link=file:///etc/passwd]x[/link]", "a\\", "[red]red[/red]"]


def test_text_from_pods_is_shown_literally_never_as_markup() -> None:
    """Pods choose PROGRESS bodies (and their names): rich must not read them as markup,
    or a stray "[/x]" raises MarkupError when the bars render and `fedloom run` loses
    its summary."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    with LiveProgress(console, ["pod-a", "[/pod]"]) as progress:
        for text in HOSTILE:
            progress.on_event(pod_event("pod-a", EventKind.PROGRESS, stage=text))
            progress.on_event(Event(TASK, "pod-a", EventKind.PROGRESS, {text: 1}))
            progress.on_event(pod_event("[/pod]", EventKind.PROGRESS, stage=text))
            progress._progress.refresh()
            console.print(progress._progress.make_tasks_table(progress._progress.tasks))
        progress.on_event(pod_event("[/pod]", EventKind.STATUS, status="task_start"))
        progress._progress.refresh()
    shown = out.getvalue()
    assert "stage [/x]" in shown
    assert "[/pod]: task_start" in shown
    assert "[red]red[/red]" in shown


def test_labels_count_from_one_with_their_totals() -> None:
    body = {"round": 3, "epoch": 0, "epochs": 2, "batch": 12, "batches": 40, "step": 13}
    assert progress_label(body, rounds=10) == "round 4/10, epoch 1/2, batch 13/40"
    assert progress_label({"round": 0, "loss": 0.25}) == "round 1, loss 0.25"
    assert progress_label({}) == "working"


def test_a_training_bar_fills_with_its_steps_and_the_rounds_bar_has_a_total() -> None:
    console = Console(file=io.StringIO(), force_terminal=False, width=120)
    with LiveProgress(console, ["pod-a"], rounds=10) as progress:
        body = {
            "round": 3,
            "epoch": 1,
            "epochs": 2,
            "batch": 4,
            "batches": 5,
            "step": 10,
            "steps": 10,
        }
        progress.on_event(Event(TASK, "pod-a", EventKind.PROGRESS, body))
        progress.on_event(task_event(EventKind.ROUND_FINISHED, round=3, metrics={}))
        tasks = {task.description: task for task in progress._progress.tasks}
        pod = tasks["pod-a: round 4/10, epoch 2/2, batch 5/5"]
        assert (pod.completed, pod.total) == (10, 10)
        assert (tasks["rounds"].completed, tasks["rounds"].total) == (4, 10)


def test_status_and_leaving_pods_are_named_on_their_bars() -> None:
    console = Console(file=io.StringIO(), force_terminal=False, width=120)
    with LiveProgress(console, ["pod-a", "pod-b"]) as progress:
        progress.on_event(pod_event("pod-a", EventKind.STATUS, status="preparing_data"))
        progress.on_event(
            pod_event("pod-b", EventKind.PARTICIPANT_REJECTED, reason="ACCESS_DENIED", message="")
        )
        descriptions = {task.description for task in progress._progress.tasks}
    assert {"pod-a: preparing_data", "pod-b: rejected (ACCESS_DENIED)"} <= descriptions


def test_a_task_without_rounds_gets_no_rounds_bar() -> None:
    console = Console(file=io.StringIO(), force_terminal=False, width=120)
    with LiveProgress(console, ["pod-a"]) as progress:
        progress.on_event(task_event(EventKind.TASK_STARTED, protocol="analytics", pods=["a"]))
        assert [task.description for task in progress._progress.tasks] == ["pod-a: waiting"]


def simulation_events(rounds: int = 1) -> list[Event]:
    events = [task_event(EventKind.TASK_STARTED, rounds=2, clients=3, startup_seconds=1.25)]
    for round_index in range(rounds):
        events.append(task_event(EventKind.ROUND_STARTED, round=round_index, clients=3))
        for done in (1, 2, 3):
            client = virtual_client(done)
            fields = {"round": round_index, "client": done, "done": done, "total": 3}
            metrics = {"loss": 0.5}
            events.append(
                Event(TASK, client, EventKind.PARTICIPANT_DONE, fields | {"metrics": metrics})
            )
        events.append(
            task_event(
                EventKind.ROUND_FINISHED, round=round_index, metrics={"train_accuracy": 0.75}
            )
        )
    return events


def test_the_simulation_display_follows_the_events() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=100)
    with LiveProgress(
        console,
        rounds=2,
        waiting="starting workers",
        transient=False,
        refresh_thread=False,
        label_width=18,
    ) as progress:
        progress.on_event(simulation_events()[0])
        for event in simulation_events()[1:]:
            progress.on_event(event)
    text = out.getvalue()
    assert "ready in 1.2 s" in text or "ready in 1.3 s" in text
    assert "round 0" in text and "3/3" in text
    assert "train acc 0.750" in text and "1/2" in text
    assert "loss 0.500" in text


def test_the_simulation_display_starts_with_its_waiting_bar_and_runs_no_thread() -> None:
    before = threading.active_count()
    console = Console(file=io.StringIO())
    with LiveProgress(
        console, rounds=2, waiting="starting workers", refresh_thread=False
    ) as progress:
        assert [task.description for task in progress._progress.tasks] == ["starting workers"]
        progress.on_event(task_event(EventKind.ROUND_STARTED, round=0, clients=3))
        assert threading.active_count() == before
