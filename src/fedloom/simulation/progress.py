"""A rich progress display for simulations: one bar for rounds, one for this round's clients.

Pass :meth:`SimulationProgress.on_event` as a :class:`~fedloom.simulation.Simulation`'s
``on_event`` hook, inside ``with SimulationProgress(console, rounds):``. The display is
redrawn on each engine event rather than by a refresh thread: with no thread running, the
process pool may fork its workers (see :func:`~fedloom.simulation.process_pool.fork_hazard`).
"""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from fedloom.simulation.engine import SimulationEvent

__all__ = ["SimulationProgress"]


class SimulationProgress:
    """Rich bars driven by simulation events (see the module docstring)."""

    def __init__(self, console: Console, rounds: int, *, transient: bool = True) -> None:
        self._progress = Progress(
            TextColumn("{task.description:<18}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[note]}"),
            TimeElapsedColumn(),
            console=console,
            transient=transient,
            auto_refresh=False,
        )
        self._rounds: TaskID = self._progress.add_task("starting workers", total=rounds, note="")
        self._clients: TaskID | None = None

    def __enter__(self) -> SimulationProgress:
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def on_event(self, event: SimulationEvent) -> None:
        """Update the bars from one engine event."""
        progress = self._progress
        if event.kind == "started":
            seconds = event.metrics.get("startup_seconds", 0.0)
            progress.update(self._rounds, description="rounds", note=f"ready in {seconds:.1f} s")
        elif event.kind == "round_start":
            if self._clients is None:
                self._clients = progress.add_task("clients", total=event.total, note="")
            progress.reset(self._clients, total=event.total, description=f"round {event.round}")
        elif event.kind == "client_done" and self._clients is not None:
            loss = event.metrics.get("loss")
            note = "" if loss is None else f"loss {loss:.3f}"
            progress.update(self._clients, completed=event.done, note=note)
        elif event.kind == "round_end":
            accuracy = event.metrics.get("train_accuracy")
            note = "" if accuracy is None else f"train acc {accuracy:.3f}"
            progress.update(self._rounds, advance=1, note=note)
        progress.refresh()
