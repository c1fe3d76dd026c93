"""The command line's per-pod progress bars (fedloom run)."""

from __future__ import annotations

import io

from rich.console import Console

from fedloom.cli.progress import PodProgress
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
        assert tasks["pod-a: batch 3"].total == 4
        progress.on_progress("pod-b", MessageType.PROGRESS, {"epoch": 1, "batch": 5})
        assert any("epoch 1" in task.description for task in progress._progress.tasks)
        progress.on_progress("nobody", MessageType.PROGRESS, {"epoch": 9})  # ignored
