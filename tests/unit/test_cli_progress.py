"""The command line's per-pod progress bars (fedloom run)."""

from __future__ import annotations

import io

from rich.console import Console

from fedloom.cli.progress import PodProgress, progress_label
from fedloom.wire import MessageType


def test_batches_drive_each_bar_and_the_slowest_pod() -> None:
    console = Console(file=io.StringIO(), force_terminal=False, width=120)
    with PodProgress(console, ["pod-a", "pod-b"]) as progress:
        progress.on_progress("pod-a", MessageType.NUM_BATCHES, {"count": 4})
        progress.on_progress("pod-b", MessageType.NUM_BATCHES, {"count": 2})
        progress.on_progress("pod-a", MessageType.CURRENT_BATCH_ID, {"batch": 3})
        progress.on_progress("pod-b", MessageType.CURRENT_BATCH_ID, {"batch": 2})
        tasks = {task.description: task for task in progress._progress.tasks}
        assert tasks["slowest pod"].completed == 50  # pod-a: 2 of 4, pod-b: 1 of 2
        assert tasks["pod-a: batch 3/4"].total == 4
        progress.on_progress("pod-b", MessageType.PROGRESS, {"epoch": 1, "batch": 5})
        assert any("epoch 2, batch 6" in task.description for task in progress._progress.tasks)
        progress.on_progress("nobody", MessageType.PROGRESS, {"epoch": 9})  # ignored


HOSTILE = ["[/x]", "[bold", "[/]", "[link=file:///etc/passwd]x[/link]", "a\\", "[red]red[/red]"]


def test_text_from_pods_is_shown_literally_never_as_markup() -> None:
    """Pods choose PROGRESS bodies (and their names): rich must not read them as markup,
    or a stray "[/x]" raises MarkupError when the bars render and `fedloom run` loses
    its summary."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200)
    with PodProgress(console, ["pod-a", "[/pod]"]) as progress:
        for text in HOSTILE:
            progress.on_progress("pod-a", MessageType.PROGRESS, {"stage": text})
            progress.on_progress("pod-a", MessageType.PROGRESS, {text: 1})
            progress.on_progress("[/pod]", MessageType.PROGRESS, {"stage": text})
            progress._progress.refresh()
            console.print(progress._progress.make_tasks_table(progress._progress.tasks))
        progress.on_progress("[/pod]", MessageType.TASK_START, {})
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
    with PodProgress(console, ["pod-a"], rounds=10) as progress:
        body = {
            "round": 3,
            "epoch": 1,
            "epochs": 2,
            "batch": 4,
            "batches": 5,
            "step": 10,
            "steps": 10,
        }
        progress.on_progress("pod-a", MessageType.PROGRESS, body)
        progress.on_round({"round": 3})
        tasks = {task.description: task for task in progress._progress.tasks}
        pod = tasks["pod-a: round 4/10, epoch 2/2, batch 5/5"]
        assert (pod.completed, pod.total) == (10, 10)
        assert (tasks["rounds"].completed, tasks["rounds"].total) == (4, 10)
