"""What ``fedloom simulate`` writes after a run: its JSON summary and its report folder.

The bars and the table it shows are the command line's (:mod:`fedloom.cli._simulate`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from fedloom.errors import ConfigError
from fedloom.simulation._engine import SimulationResult
from fedloom.simulation._settings import SimulationConfig

__all__ = ["REPORT_FILES", "check_out_folder", "summary", "write_outputs"]

REPORT_FILES = ("summary.json", "final_model.safetensors", "training.png", "rounds")
"""What a report folder holds; a folder with any of them already holds a report."""

_ROUND_FILE = re.compile(r"round-(\d+)\.json")


def check_out_folder(out: Path, *, force: bool = False) -> None:
    """Check that a report may be written to ``out``: missing, empty, or ``force``.

    Raises:
        ConfigError: ``out`` is not a folder, holds a report (one of
            :data:`REPORT_FILES`) and ``force`` is false, or cannot be written.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is not a folder")
    held = next((name for name in REPORT_FILES if (out / name).exists()), None)
    if held is not None and not force:
        raise ConfigError(
            f"--out {out} already holds a report ({held}); pass --force to overwrite it"
        )
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out} cannot be written: {existing} is not a writable folder")


def summary(config: SimulationConfig, result: SimulationResult) -> dict[str, Any]:
    """The run in a few JSON-able numbers.

    ``client_rounds`` counts a client once per round it was in (a client sampled in three
    rounds counts three times); ``clients_sampled`` counts the distinct clients.
    """
    final = result.rounds[-1].metrics if result.rounds else {}
    counts = [r.counts() for r in result.rounds]
    return {
        "backend": config.backend,
        "num_parallels": config.num_parallels,
        "rounds": len(result.rounds),
        "stopped": result.stopped,
        "startup_seconds": round(result.startup_seconds, 3),
        "round_seconds": [round(s, 3) for s in result.round_seconds],
        "final": final,
        "clients_sampled": len({c.client for r in result.rounds for c in r.clients}),
        "client_rounds": {
            key: sum(c[key] for c in counts)
            for key in ("finished", "failed", "interrupted_and_retried")
        },
    }


def write_outputs(result: SimulationResult, data: dict[str, Any], out: Path) -> list[Path]:
    """Write a simulation's outputs into ``out``; return the paths written.

    Per-round JSON reports, ``summary.json``, ``final_model.safetensors`` and
    ``training.png``; round reports of an earlier run in ``out`` are removed.

    Raises:
        ConfigError: a file cannot be written.
    """
    from safetensors.numpy import save_file

    from fedloom.algorithms.ml._plots import RoundCurves, plot_training

    try:
        out.mkdir(parents=True, exist_ok=True)
        paths = result.write_reports(out / "rounds")
        _remove_stale_rounds(out / "rounds", keep=set(paths))
        model = out / "final_model.safetensors"
        save_file(result.parameters, str(model))
        plot = out / "training.png"
        rounds = [RoundCurves(r.round, r.metrics, r.client_metrics()) for r in result.rounds]
        plot_training(rounds, plot, members="client")
        summary_path = out / "summary.json"
        summary_path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the report to {out}: {exc.strerror or exc}") from exc
    return [*paths, model, plot, summary_path]


def _remove_stale_rounds(folder: Path, keep: set[Path]) -> None:
    """Remove ``round-<n>.json`` files this run did not write (only with ``--force``)."""
    for path in folder.iterdir():
        if _ROUND_FILE.fullmatch(path.name) and path not in keep:
            path.unlink()
