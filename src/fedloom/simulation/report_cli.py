"""What ``fedloom sim`` shows and writes: bars while it runs, a table and files after."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedloom.simulation.engine import Simulation, SimulationConfig, SimulationResult, make_backend
from fedloom.simulation.progress import SimulationProgress

__all__ = ["rounds_table", "run_and_report", "summary"]


def run_and_report(
    config: SimulationConfig,
    console: Console,
    *,
    out: Path | None = None,
    json_output: bool = False,
    ray_address: str | None = None,
) -> SimulationResult:
    """Run ``config`` with progress bars; print a summary; write reports under ``out``.

    SIGTERM stops the simulation like Ctrl-C (workers interrupted, partial rounds dropped).
    """
    with SimulationProgress(console, config.rounds) as progress:
        simulation = Simulation(
            config,
            backend=make_backend(config, ray_address=ray_address),
            on_event=progress.on_event,
        )
        with _stop_on_signals(simulation):
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


def summary(config: SimulationConfig, result: SimulationResult) -> dict[str, Any]:
    """The run in a few JSON-able numbers."""
    final = result.rounds[-1].metrics if result.rounds else {}
    return {
        "backend": config.backend,
        "num_parallels": config.num_parallels,
        "rounds": len(result.rounds),
        "stopped": result.stopped,
        "startup_seconds": round(result.startup_seconds, 3),
        "round_seconds": [round(s, 3) for s in result.round_seconds],
        "final": final,
        "clients": {
            "finished": sum(r.counts()["finished"] for r in result.rounds),
            "failed": sum(r.counts()["failed"] for r in result.rounds),
            "interrupted_and_retried": sum(
                r.counts()["interrupted_and_retried"] for r in result.rounds
            ),
        },
    }


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


def write_outputs(result: SimulationResult, data: dict[str, Any], out: Path) -> list[Path]:
    """Per-round JSON reports, ``summary.json`` and ``final_model.safetensors``."""
    from safetensors.numpy import save_file

    out.mkdir(parents=True, exist_ok=True)
    paths = result.write_reports(out / "rounds")
    model = out / "final_model.safetensors"
    save_file(result.parameters, str(model))
    summary_path = out / "summary.json"
    summary_path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    return [*paths, model, summary_path]


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
