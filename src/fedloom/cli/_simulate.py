"""``fedloom simulate``: bars while the simulation runs, a table and files after."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedloom.cli._progress import LiveProgress
from fedloom.simulation._engine import Simulation, SimulationResult
from fedloom.simulation._report_cli import check_out_folder, summary, write_outputs
from fedloom.simulation._settings import SimulationConfig
from fedloom.simulation._startup import make_backend

__all__ = ["rounds_table", "run_and_report"]

_LABEL_WIDTH = 18
"""A simulation's labels are short ("starting workers", "round 12")."""


def run_and_report(
    config: SimulationConfig,
    console: Console,
    *,
    out: Path | None = None,
    force: bool = False,
    json_output: bool = False,
    ray_address: str | None = None,
) -> SimulationResult:
    """Run ``config`` with progress bars; print a summary; write reports under ``out``.

    SIGTERM stops the simulation like Ctrl-C (workers interrupted, partial rounds dropped).

    Raises:
        ConfigError: ``out`` already holds a report and ``force`` is false, or it cannot
            be written (both found before the simulation starts).
    """
    if out is not None:
        check_out_folder(out, force=force)
    simulation = Simulation(config, backend=make_backend(config, ray_address=ray_address))
    progress = LiveProgress(
        console,
        rounds=config.rounds,
        waiting="starting workers",
        refresh_thread=False,
        label_width=_LABEL_WIDTH,
    )
    with progress, simulation.subscribe(progress.on_event), _stop_on_signals(simulation):
        result = simulation.run()
    if not json_output:
        console.print(rounds_table(result))
    data = summary(config, result)
    if config.backend == "process":
        data["start_method"] = getattr(simulation.backend, "start_method", None)
    if out is not None:
        data["files"] = [str(p) for p in write_outputs(result, data, out)]
    print(json.dumps(data, indent=None if json_output else 2, default=str))
    if result.stopped:
        raise KeyboardInterrupt
    return result


def rounds_table(result: SimulationResult) -> Table:
    table = Table(title="simulated FedAvg rounds")
    for heading in ("round", "clients", "failed", "train loss", "train acc", "val acc", "s"):
        table.add_column(heading, justify="right")
    for report in result.rounds:
        m = report.metrics
        counts = report.counts()
        table.add_row(
            str(report.round),
            str(counts["finished"]),
            str(counts["failed"]),
            *(
                f"{m[k]:.4f}" if k in m else "-"
                for k in ("train_loss", "train_accuracy", "validation_accuracy")
            ),
            f"{report.seconds:.2f}",
        )
    return table


class _stop_on_signals:  # noqa: N801 - used like a function
    """Within the block, SIGTERM and SIGINT stop the simulation instead of killing it."""

    def __init__(self, simulation: Simulation) -> None:
        self._simulation = simulation
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for number in (signal.SIGTERM, signal.SIGINT):
            self._previous[number] = signal.signal(number, self._stop)

    def __exit__(self, *_: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _stop(self, _number: int, _frame: object) -> None:
        self._simulation.stop()
