"""Live progress of a task on the command line: one bar per pod, and the rounds.

A pod's bar reads like ``pod-a: round 4/10, epoch 1/2, batch 13/40``: counts from 1, with
their totals (the task's rounds, the pod's epochs and batches), and it fills with the
pod's training steps of the round; batched tasks count batches. The rounds bar has the
task's number of rounds as its total.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from fedloom.wire import MessageType

_LABEL_WIDTH = 48


def progress_label(body: Mapping[str, object], rounds: int | None = None) -> str:
    """A PROGRESS body as people read it: ``round 4/10, epoch 1/2, batch 13/40, loss 0.31``.

    The hooks count epochs and batches from 0 (``epoch`` of ``epochs``); people count
    from 1. Unknown keys are shown as ``key value``.
    """
    parts: list[str] = []
    shown = {"round", "epoch", "epochs", "batch", "batches", "step", "steps"}
    round_index = body.get("round")
    if isinstance(round_index, int):
        parts.append(_of("round", round_index + 1, rounds))
    for name, total in (("epoch", "epochs"), ("batch", "batches")):
        value, count = body.get(name), body.get(total)
        if isinstance(value, int):
            parts.append(_of(name, value + 1, count if isinstance(count, int) else None))
    for key, value in body.items():
        if key not in shown:
            parts.append(f"{key} {value}")
    return ", ".join(parts) or "working"


def _of(name: str, value: int, total: int | None) -> str:
    return f"{name} {value}/{total}" if total else f"{name} {value}"


class PodProgress:
    """Rich progress bars fed by the modeller's progress and round callbacks."""

    def __init__(self, console: Console, pods: Iterable[str], rounds: int | None = None) -> None:
        self._progress = Progress(
            # descriptions hold what pods send (names, PROGRESS bodies): plain text, never
            # markup, or a stray "[/x]" makes rich raise MarkupError while rendering
            TextColumn(f"{{task.description:<{_LABEL_WIDTH}}}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self._total_rounds = rounds
        self._rounds: TaskID | None = None
        self._slowest: TaskID | None = None
        self._batches_total: dict[str, int | None] = {}
        self._batches_done: dict[str, int] = {}
        self._bars = {pod: self._progress.add_task(f"{pod}: waiting", total=None) for pod in pods}

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def on_progress(self, pod: str, kind: MessageType, body: Mapping[str, object]) -> None:
        bar = self._bars.get(pod)
        if bar is None:
            return
        if kind is MessageType.NUM_BATCHES:
            count = body.get("count")
            if isinstance(count, int) and count > 0:
                self._progress.update(bar, total=count)
            self._batches_total[pod] = count if isinstance(count, int) and count > 0 else None
            self._update_slowest()
        elif kind is MessageType.CURRENT_BATCH_ID:
            batch = body.get("batch")
            if isinstance(batch, int):
                total = self._batches_total.get(pod)
                self._progress.update(
                    bar, completed=batch - 1, description=f"{pod}: {_of('batch', batch, total)}"
                )
                self._batches_done[pod] = batch - 1
                self._update_slowest()
        elif kind is MessageType.PROGRESS:
            label = progress_label(body, self._total_rounds)
            step, steps = body.get("step"), body.get("steps")
            changes: dict[str, Any] = {"description": _fit(f"{pod}: {label}")}
            if isinstance(step, int) and isinstance(steps, int) and steps > 0:
                changes |= {"total": steps, "completed": min(step, steps)}
            self._progress.update(bar, **changes)
        else:
            self._progress.update(bar, description=f"{pod}: {kind.value.lower()}")

    def _update_slowest(self) -> None:
        """The slowest pod's share of its batches (a pod without a count yet counts as 0)."""
        shares = [
            self._batches_done.get(pod, 0) / total if total else 0.0
            for pod, total in self._batches_total.items()
        ]
        if not shares:
            return
        if self._slowest is None:
            self._slowest = self._progress.add_task("slowest pod", total=100)
        self._progress.update(self._slowest, completed=round(100 * min(shares)))

    def on_round(self, summary: Mapping[str, Any]) -> None:
        if self._rounds is None:
            self._rounds = self._progress.add_task("rounds", total=self._total_rounds)
        round_index = summary.get("round")
        if isinstance(round_index, int):
            self._progress.update(self._rounds, completed=round_index + 1)
        else:
            self._progress.advance(self._rounds)


def _fit(text: str) -> str:
    return text if len(text) <= _LABEL_WIDTH else text[: _LABEL_WIDTH - 1] + "…"
