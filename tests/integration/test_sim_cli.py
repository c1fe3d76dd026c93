"""``fedloom sim``: a real command-line run, its outputs, its errors and its signals."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from safetensors.numpy import load_file

FEDLOOM = [sys.executable, "-m", "fedloom"]

CONFIG = """
[simulation]
rounds = {rounds}
seed = 1
backend = "{backend}"
num_parallels = 2
validation_fraction = 0.25

[model]
name = "mlp"
config = {{ in_features = 64, hidden = [16], out_features = 10 }}

[data]
name = "digits"
clients = 6
partition = "iid"

[training]
batch_size = 16
learning_rate = 0.1

[sampling]
kind = "random"
fraction = 0.5
"""


def write_config(folder: Path, *, rounds: int = 2, backend: str = "process") -> Path:
    path = folder / "sim.toml"
    path.write_text(CONFIG.format(rounds=rounds, backend=backend))
    return path


def test_sim_runs_a_config_and_writes_its_report(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    out = tmp_path / "report"
    done = subprocess.run(
        [*FEDLOOM, "sim", str(config), "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["rounds"] == 2 and not summary["stopped"]
    # the progress bars run no thread, so the workers of `fedloom sim` are forked
    assert summary["start_method"] == "fork"
    # client-rounds: 3 of the 6 clients in each of 2 rounds; some may have been sampled twice
    assert summary["client_rounds"] == {"finished": 6, "failed": 0, "interrupted_and_retried": 0}
    assert 0.0 < summary["final"]["train_accuracy"] <= 1.0
    rounds = [json.loads((out / "rounds" / f"round-{i}.json").read_text()) for i in range(2)]
    assert [r["summary"]["finished"] for r in rounds] == [3, 3]
    assert summary["clients_sampled"] == len({c["client"] for r in rounds for c in r["clients"]})
    weights = load_file(str(out / "final_model.safetensors"))
    assert weights["1.weight"].shape == (16, 64)
    assert json.loads((out / "summary.json").read_text())["rounds"] == 2


def test_sim_options_override_the_file(tmp_path: Path) -> None:
    config = write_config(tmp_path, rounds=1)
    done = subprocess.run(
        [*FEDLOOM, "sim", str(config), "--backend", "thread", "--num-parallels", "3", "--json"],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["backend"], summary["num_parallels"]) == ("thread", 3)


def test_a_bad_config_exits_with_the_config_code_and_no_traceback(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace('kind = "random"', 'kind = "lottery"'))
    done = subprocess.run(
        [*FEDLOOM, "sim", str(config)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 3
    assert "lottery" in done.stderr and "Traceback" not in done.stderr


def test_sigterm_stops_the_simulation_and_its_workers(tmp_path: Path) -> None:
    config = write_config(tmp_path, rounds=500)
    process = subprocess.Popen(
        [*FEDLOOM, "sim", str(config), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        parent = psutil.Process(process.pid)
        deadline = time.monotonic() + 120
        while len(parent.children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = parent.children(recursive=True)
        assert len(workers) >= 2
        time.sleep(1.0)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive
