"""Live progress of a task on the command line: one bar per pod."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any, Self

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from fedloom.wire import MessageType


class PodProgress:
    """Rich progress bars fed by the modeller's progress and round callbacks."""

    def __init__(self, console: Console, pods: Iterable[str]) -> None:
        self._progress = Progress(
            # descriptions hold what pods send (names, PROGRESS bodies): plain text, never
            # markup, or a stray "[/x]" makes rich raise MarkupError while rendering
            TextColumn("{task.description:<40}", markup=False),
            BarColumn(),
            TextColumn("{task.completed}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
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
                self._progress.update(bar, completed=batch - 1, description=f"{pod}: batch {batch}")
                self._batches_done[pod] = batch - 1
                self._update_slowest()
        elif kind is MessageType.PROGRESS:
            text = " ".join(f"{key} {value}" for key, value in body.items()) or "working"
            self._progress.update(bar, description=f"{pod}: {text}"[:40], advance=1)
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
            self._rounds = self._progress.add_task("rounds", total=None)
        self._progress.advance(self._rounds)
