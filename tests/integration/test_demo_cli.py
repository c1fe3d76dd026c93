"""The ``fedloom demo`` command and the README's Python example, run as a user would."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch

from fedloom import SqliteExperimentStore
from fedloom.pod import SqlitePodStore

README = Path(__file__).parents[2] / "README.md"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DEMO_POD_FILES = ("pod-a", "pod-b", "pod-c")
DEMO_COLUMNS = ("pixel_19", "pixel_28", "pixel_36", "pixel_43")
MLP_SHAPES = {"1.weight": (64, 64), "1.bias": (64,), "3.weight": (10, 64), "3.bias": (10,)}


def fedloom_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m fedloom``.

    (``python -m fedloom.cli`` does not work: ``fedloom.cli`` is a package without a
    ``__main__``.)
    """
    script = Path(sys.executable).parent / "fedloom"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "fedloom"]


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"MPLCONFIGDIR": str(cwd / "mpl"), "COLUMNS": "120"}
    return subprocess.run(
        [*fedloom_command(), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that contain ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            command = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in command:
            found.append(command)
    return found


def _no_constants(name: str) -> Any:
    raise AssertionError(f"metrics.json holds {name}")


@pytest.mark.slow
def test_demo_writes_a_complete_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = run_cli("demo", "--out", str(out), "--rounds", "10", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    # the hub and the pods ran as processes of their own, and none is left behind
    assert re.search(r"hub pid \d+ on 127\.0\.0\.1:\d+", done.stdout), done.stdout[-3000:]
    assert "stopped: pod-a (exit 0), pod-b (exit 0), pod-c (exit 0), hub (exit 0)" in done.stdout
    assert _processes_mentioning(str(out / "cluster")) == []
    for name in ("hub", *DEMO_POD_FILES):
        assert "Traceback" not in (out / "cluster" / "logs" / f"{name}.log").read_text()

    # metrics.json: strict JSON (no NaN/Infinity), accuracy, rounds, analytics
    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=_no_constants)
    assert metrics["final_accuracy"] >= 0.90
    assert math.isfinite(metrics["final_loss"])
    assert [row["round"] for row in metrics["rounds"]] == list(range(10))
    for row in metrics["rounds"]:
        assert sorted(row["pods"]) == list(DEMO_POD_FILES)
        assert row["rejected"] == {}
        assert all(math.isfinite(v) for v in row["aggregated"].values())
    assert set(metrics["analytics"]) == set(DEMO_COLUMNS)

    # the analytics equal the central statistics of the pods' CSV files
    frames = [pd.read_csv(out / "data" / f"{pod}.csv") for pod in DEMO_POD_FILES]
    whole = pd.concat(frames, ignore_index=True)
    for column in DEMO_COLUMNS:
        stats = metrics["analytics"][column]
        assert stats["count"] == len(whole)
        assert stats["mean"] == pytest.approx(whole[column].mean(), rel=1e-9, abs=1e-12)
        assert stats["std"] == pytest.approx(whole[column].std(ddof=1), rel=1e-9, abs=1e-12)
        assert stats["min"] == pytest.approx(whole[column].min())
        assert stats["max"] == pytest.approx(whole[column].max())
        assert sum(stats["histogram"]["counts"]) == len(whole)

    # the final model: safetensors with the MLP's keys and shapes
    from safetensors.numpy import load_file

    final = load_file(str(out / "final_model.safetensors"))
    assert {k: v.shape for k, v in final.items()} == MLP_SHAPES
    assert all(np.isfinite(v).all() for v in final.values())

    assert (out / "training.png").read_bytes()[:8] == PNG_SIGNATURE

    # the modeller's store: a completed 10-round experiment whose last checkpoint is the model
    with SqliteExperimentStore(out / "experiments.sqlite") as store:
        experiments = {e.name: e for e in store.list_experiments()}
        assert set(experiments) == {"digits-analytics", "digits-fedavg"}
        assert all(e.status == "completed" for e in experiments.values())
        training = experiments["digits-fedavg"]
        assert training.experiment_id == metrics["experiment_id"]
        assert [r.round_index for r in training.rounds] == list(range(10))
        # the default retention: the last round's checkpoint and the best round's
        best = min(training.rounds, key=lambda r: r.aggregated["validation_loss"]).round_index
        assert [c.round_index for c in training.checkpoints] == sorted({best, 9})
        latest = store.load_checkpoint(training.experiment_id)
        assert all(np.array_equal(latest[k], final[k]) for k in MLP_SHAPES)
    for pod in DEMO_POD_FILES:
        with SqlitePodStore(out / "cluster" / "pods" / pod / "pod.sqlite") as pod_store:
            runs = pod_store.task_runs()
            assert [(r.protocol, r.status) for r in runs] == [
                ("analytics", "completed"),
                ("fedavg", "completed"),
            ]


@pytest.mark.slow
def test_demo_with_zero_rounds_is_a_usage_error(tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = run_cli("demo", "--out", str(out), "--rounds", "0", cwd=tmp_path, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "--rounds" in done.stderr
    assert not out.exists()


def readme_python_example() -> str:
    text = README.read_text(encoding="utf-8").split("\n## Python API\n", 1)[-1]
    match = re.search(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)
    assert match is not None, "README.md's Python API section has no ```python block"
    return match.group(1)


def test_readme_python_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    code = readme_python_example()
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    exec(compile(code, str(README), "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed, "the README example printed nothing"
    assert math.isfinite(float(printed[0]))  # the federated mean
    rounds = namespace["run"].result.history
    assert len(printed) == 1 + len(rounds)
    assert isinstance(namespace["model"], torch.nn.Module)
