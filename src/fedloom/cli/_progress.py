r"""Live progress on the command line: rich bars drawn from the event stream.

One renderer, :class:`LiveProgress`, serves ``fedloom run`` (subscribed to the
:class:`~fedloom.modeller.Modeller`), ``fedloom simulate`` (subscribed to the
:class:`~fedloom.simulation.Simulation`) and the demo; it reads only
:class:`~fedloom._events.Event`\ s, so any source of them can be shown.

- A pod's bar reads like ``pod-a: round 4/10, epoch 1/2, batch 13/40``: counts from 1,
  with their totals (the task's rounds, the pod's epochs and batches), and it fills with
  the pod's training steps of the round; batched tasks count batches, and a "slowest pod"
  bar shows the share of its batches the slowest pod has done.
- The rounds bar has the task's number of rounds as its total, and notes the simulation's
  start-up time and the last round's training accuracy.
- A simulation's clients bar fills with the round's virtual clients.

Everything shown that a pod chose (its name, its PROGRESS bodies) is plain text, never
rich markup.
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

from fedloom._events import MODELLER, Event, EventKind

__all__ = ["DEFAULT_LABEL_WIDTH", "LiveProgress", "progress_label"]

DEFAULT_LABEL_WIDTH = 48
"""Characters of a bar's label (longer ones are cut with an ellipsis)."""


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


class LiveProgress:
    """Rich bars fed by :meth:`on_event` (see the module docstring).

    Args:
        pods: the pods that get a bar (events of other participants, but the modeller's
            and a simulation's virtual clients', are ignored).
        rounds: the task's number of rounds, the rounds bar's total.
        waiting: when given, the rounds bar is shown at once with this label until the
            task starts (a simulation's "starting workers"); otherwise it appears with the
            task's start or its first round.
        refresh_thread: redraw on a rich thread, so elapsed times tick between events.
            Without it the bars are redrawn on each event and no thread runs: a simulation's
            process pool may then fork its workers (see
            :func:`~fedloom.simulation._process_pool.fork_hazard`).
    """

    def __init__(
        self,
        console: Console,
        pods: Iterable[str] = (),
        rounds: int | None = None,
        *,
        waiting: str | None = None,
        transient: bool = True,
        refresh_thread: bool = True,
        label_width: int = DEFAULT_LABEL_WIDTH,
    ) -> None:
        self._progress = Progress(
            # descriptions hold what pods send (names, PROGRESS bodies): plain text, never
            # markup, or a stray "[/x]" makes rich raise MarkupError while rendering
            TextColumn(f"{{task.description:<{label_width}}}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}", markup=False),
            TimeElapsedColumn(),
            console=console,
            transient=transient,
            auto_refresh=refresh_thread,
        )
        self._label_width = label_width
        self._redraw = not refresh_thread
        self._total_rounds = rounds
        self._rounds: TaskID | None = None
        if waiting is not None:
            self._rounds = self._add(waiting, total=rounds)
        self._clients: TaskID | None = None
        self._slowest: TaskID | None = None
        self._batches_total: dict[str, int | None] = {}
        self._batches_done: dict[str, int] = {}
        self._bars = {pod: self._add(f"{pod}: waiting", total=None) for pod in pods}

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

    def on_event(self, event: Event) -> None:
        """Update the bars from one event (an :class:`~fedloom._events.EventStream` subscriber)."""
        if event.participant == MODELLER:
            self._on_task(event)
        elif event.kind is EventKind.PARTICIPANT_DONE:
            self._on_client(event.fields)
        elif event.participant in self._bars:
            self._on_pod(event.participant, event.kind, event.fields)
        if self._redraw:
            self._progress.refresh()

    def _add(self, description: str, total: int | None) -> TaskID:
        return self._progress.add_task(description, total=total, note="")

    def _rounds_bar(self) -> TaskID:
        if self._rounds is None:
            self._rounds = self._add("rounds", total=self._total_rounds)
        return self._rounds

    def _on_task(self, event: Event) -> None:
        fields = event.fields
        if event.kind is EventKind.TASK_STARTED and (
            self._rounds is not None or self._total_rounds is not None
        ):
            seconds = fields.get("startup_seconds")
            note = f"ready in {seconds:.1f} s" if isinstance(seconds, int | float) else ""
            self._progress.update(self._rounds_bar(), description="rounds", note=note)
        elif event.kind is EventKind.ROUND_STARTED:
            total = fields.get("clients")
            if self._clients is None:
                self._clients = self._add("clients", total=None)
            self._progress.reset(
                self._clients,
                total=total if isinstance(total, int) else None,
                description=f"round {fields.get('round')}",
            )
        elif event.kind is EventKind.ROUND_FINISHED:
            bar = self._rounds_bar()
            metrics = fields.get("metrics")
            accuracy = metrics.get("train_accuracy") if isinstance(metrics, Mapping) else None
            changes: dict[str, Any] = {"description": "rounds"}
            if isinstance(accuracy, int | float):
                changes["note"] = f"train acc {accuracy:.3f}"
            round_index = fields.get("round")
            if isinstance(round_index, int):
                self._progress.update(bar, completed=round_index + 1, **changes)
            else:
                self._progress.update(bar, advance=1, **changes)

    def _on_client(self, fields: Mapping[str, Any]) -> None:
        if self._clients is None:
            return
        metrics = fields.get("metrics")
        loss = metrics.get("loss") if isinstance(metrics, Mapping) else None
        note = f"loss {loss:.3f}" if isinstance(loss, int | float) else ""
        done = fields.get("done")
        if isinstance(done, int):
            self._progress.update(self._clients, completed=done, note=note)

    def _on_pod(self, pod: str, kind: EventKind, fields: Mapping[str, Any]) -> None:
        bar = self._bars[pod]
        if kind is EventKind.BATCH_COUNT:
            count = fields.get("count")
            known = count if isinstance(count, int) and count > 0 else None
            if known is not None:
                self._progress.update(bar, total=known)
            self._batches_total[pod] = known
            self._update_slowest()
        elif kind is EventKind.BATCH_STARTED:
            batch = fields.get("batch")
            if isinstance(batch, int):
                total = self._batches_total.get(pod)
                self._progress.update(
                    bar, completed=batch - 1, description=f"{pod}: {_of('batch', batch, total)}"
                )
                self._batches_done[pod] = batch - 1
                self._update_slowest()
        elif kind is EventKind.PROGRESS:
            label = progress_label(fields, self._total_rounds)
            step, steps = fields.get("step"), fields.get("steps")
            changes: dict[str, Any] = {"description": self._fit(f"{pod}: {label}")}
            if isinstance(step, int) and isinstance(steps, int) and steps > 0:
                changes |= {"total": steps, "completed": min(step, steps)}
            self._progress.update(bar, **changes)
        elif kind is EventKind.STATUS:
            self._progress.update(bar, description=self._fit(f"{pod}: {fields.get('status')}"))
        elif kind in {EventKind.PARTICIPANT_REJECTED, EventKind.PARTICIPANT_FAILED}:
            state = "rejected" if kind is EventKind.PARTICIPANT_REJECTED else "failed"
            reason = fields.get("reason")
            self._progress.update(bar, description=self._fit(f"{pod}: {state} ({reason})"))

    def _update_slowest(self) -> None:
        """The slowest pod's share of its batches (a pod without a count yet counts as 0)."""
        shares = [
            self._batches_done.get(pod, 0) / total if total else 0.0
            for pod, total in self._batches_total.items()
        ]
        if not shares:
            return
        if self._slowest is None:
            self._slowest = self._add("slowest pod", total=100)
        self._progress.update(self._slowest, completed=round(100 * min(shares)))

    def _fit(self, text: str) -> str:
        width = self._label_width
        return text if len(text) <= width else text[: width - 1] + "…"
