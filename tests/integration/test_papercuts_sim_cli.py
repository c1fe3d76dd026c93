"""``fedloom sim`` as a new user meets it: the summary's counts, ``--out`` and ``--force``,
``training.png``, and config errors that name their TOML section (real commands)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from .test_demo_cli import PNG_SIGNATURE, fedloom_command, run_cli

CONFIG = """
[simulation]
rounds = 2
seed = 2
backend = "thread"
num_parallels = 2
validation_fraction = 0.25

[model]
name = "mlp"
config = { in_features = 64, hidden = [8], out_features = 10 }

[data]
name = "digits"
clients = 4
partition = "iid"

[training]
batch_size = 32
learning_rate = 0.1

[sampling]
kind = "random"
fraction = 0.75
"""


def sim(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # a wide console: an error is one line however long its path is
    env = os.environ | {"MPLCONFIGDIR": str(cwd / "mpl"), "COLUMNS": "1000"}
    return subprocess.run(
        [*fedloom_command(), "sim", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_sim_counts_client_rounds_writes_its_plot_and_keeps_an_old_report(tmp_path: Path) -> None:
    (tmp_path / "sim.toml").write_text(CONFIG)
    done = sim("sim.toml", "--out", "report", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    out = tmp_path / "report"
    # 3 of 4 clients per round for 2 rounds: 6 client-rounds, at most 4 distinct clients
    rounds = [json.loads((out / "rounds" / f"round-{i}.json").read_text()) for i in range(2)]
    sampled = [{c["client"] for c in r["clients"]} for r in rounds]
    assert summary["client_rounds"] == {"finished": 6, "failed": 0, "interrupted_and_retried": 0}
    assert summary["clients_sampled"] == len(set.union(*sampled)) <= 4
    assert (out / "training.png").read_bytes()[:8] == PNG_SIGNATURE
    assert str(Path("report") / "training.png") in summary["files"]

    before = _snapshot(out)
    refused = sim("sim.toml", "--out", "report", "--json", cwd=tmp_path)
    assert refused.returncode == 3
    assert refused.stdout == ""
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("error: --out report already holds a report"), line
    assert "--force" in line
    assert _snapshot(out) == before

    forced = sim("sim.toml", "--out", "report", "--json", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert json.loads((out / "summary.json").read_text())["rounds"] == 2
    assert (out / "training.png").read_bytes()[:8] == PNG_SIGNATURE


def test_a_config_error_names_its_section_and_key(tmp_path: Path) -> None:
    (tmp_path / "sim.toml").write_text(CONFIG.replace("batch_size = 32", 'epochs = "x"'))
    done = sim("sim.toml", "--out", "report", cwd=tmp_path)
    assert done.returncode == 3
    (line,) = done.stderr.strip().splitlines()
    assert line == "error: sim.toml: [training] epochs must be an int, got 'x'"
    assert not (tmp_path / "report").exists()


def test_the_help_shows_toml_table_names_as_written(tmp_path: Path) -> None:
    """rich reads "[simulation]" as markup unless it is escaped: the help lost the name."""
    done = run_cli("sim", "--help", cwd=tmp_path)
    assert done.returncode == 0
    assert "the [simulation] table's backend" in " ".join(done.stdout.split())
