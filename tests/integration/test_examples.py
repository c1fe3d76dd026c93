"""Every file in examples/ runs as examples/README.md says, so none of them can rot.

A copy of the folder gets its data (make_data.py), keys, a hub and both pods from the
real commands; then each task file runs with ``fedloom run`` and the simulation with
``fedloom sim``. Only the hub's port is changed (the files say 127.0.0.1:7800).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .cli_kit import daemon, identities, start_hub, stop
from .test_demo_cli import run_cli

EXAMPLES = Path(__file__).parents[2] / "examples"


def _files(summary: dict[str, Any]) -> None:
    assert summary["result"]["files"] == {"pod-a": 10, "pod-b": 10}
    assert summary["result"]["failed"] == {"pod-a": 1, "pod-b": 1}  # new-broken.png


def _learned(rounds: int, accuracy: float) -> Callable[[dict[str, Any]], None]:
    def check(summary: dict[str, Any]) -> None:
        assert summary["result"]["rounds"] == rounds
        final = summary["result"]["final"]["aggregated"]
        assert final["validation_accuracy"] >= accuracy, final

    return check


def _statistics(summary: dict[str, Any]) -> None:
    statistics = summary["result"]["statistics"]
    assert set(statistics) == {"alcohol", "malic_acid", "color_intensity"}
    assert all(column["count"] == 178 for column in statistics.values())
    assert abs(statistics["alcohol"]["mean"]) < 1e-9  # make_data standardises the wines


def _summaries(summary: dict[str, Any]) -> None:
    results = summary["result"]["results"]
    assert sum(results[pod]["rows"] for pod in ("pod-a", "pod-b")) == 178


# in the order examples/README.md runs them; inference needs fedavg_images' model
TASKS: dict[str, tuple[tuple[str, ...], Callable[[dict[str, Any]], None]]] = {
    "analytics.toml": ((), _statistics),
    "fedavg.toml": ((), _learned(rounds=10, accuracy=0.85)),
    "results_only.toml": ((), _summaries),
    "fedavg_images.toml": ((), _learned(rounds=5, accuracy=0.6)),
    "inference.toml": (("--report-dir", "reports"), _files),
    "file_statistics.toml": ((), _files),
    "plugin_fedavg.toml": ((), _learned(rounds=5, accuracy=0.85)),
}
NOT_TASKS = {"pod-a.toml", "pod-b.toml", "simulation.toml"}


def test_every_example_task_file_is_run_here() -> None:
    assert {path.name for path in EXAMPLES.glob("*.toml")} == set(TASKS) | NOT_TASKS


@pytest.mark.slow
def test_the_examples_run_as_their_readme_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "examples"
    shutil.copytree(EXAMPLES, folder, ignore=shutil.ignore_patterns("data", "__pycache__"))
    subprocess.run([sys.executable, "make_data.py"], cwd=folder, check=True, timeout=120)
    identities(folder, pods=("pod-a", "pod-b"))  # the README's keys and registrations
    monkeypatch.setenv("PYTHONPATH", str(folder / "plugins"))  # as the README says
    hub, address = start_hub(folder)
    pods = []
    try:
        for toml in folder.glob("*.toml"):
            toml.write_text(toml.read_text().replace("127.0.0.1:7800", address))
        for pod in ("pod-a", "pod-b"):
            pods.append(daemon(["pod", "start", "--config", f"{pod}.toml"], folder, "online")[0])
        for task, (options, check) in TASKS.items():
            done = run_cli("run", task, "--json", *options, cwd=folder, timeout=300)
            assert done.returncode == 0, f"{task}: {done.stderr[-3000:]}"
            summary = json.loads(done.stdout)
            assert summary["accepted"] == ["pod-a", "pod-b"], task
            check(summary)
            if task == "fedavg_images.toml":  # the README copies its final model
                shutil.copy(summary["checkpoints"]["final"], folder / "model.safetensors")
    finally:
        for process in pods:
            stop(process)
        stop(hub)
    report = (folder / "reports" / "pod-a.csv").read_text().splitlines()
    assert len(report) == 12 and "new-broken.png" in report[-1]

    done = run_cli("sim", "simulation.toml", "--json", "--out", "sim-report", cwd=folder)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["rounds"] == 5
    assert (folder / "sim-report" / "training.png").exists()
