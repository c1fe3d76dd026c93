"""What ``fedloom run`` tells a person: the summary, the rejections, how to resume.

One hand deployment for the module (real ``fedloom`` commands: a hub and two pods; pod-b
runs analytics only, so it rejects FedAvg by policy), then real ``fedloom run`` processes.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedloom import SqliteExperimentStore
from fedloom.pod import SqlitePodStore

from .cli_kit import daemon, identities, pod_toml, start_hub, stop, wait_for_rows
from .test_demo_cli import fedloom_command, run_cli

REJECTION = "pod-b rejected: NO_ACCESS: protocol 'fedavg' is not allowed on this pod"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("run-cli")
    identities(folder, pods=("pod-a", "pod-b"))
    rng = np.random.default_rng(0)
    for pod in ("a", "b"):
        x = rng.normal(size=80)
        frame = pd.DataFrame({"x": x, "label": (x > 0).astype(int)})
        frame.to_csv(folder / f"{pod}.csv", index=False)
    hub, address = start_hub(folder)
    pods = []
    try:
        (folder / "pod-a.toml").write_text(pod_toml(address))
        (folder / "pod-b.toml").write_text(
            pod_toml(address, policy='protocols = ["analytics"]\n')
            .replace('"pod-a"', '"pod-b"')
            .replace("keys/pod-a.key", "keys/pod-b.key")
            .replace("pod-a.sqlite", "pod-b.sqlite")
            .replace('"a.csv"', '"b.csv"')
        )
        for pod in ("pod-a", "pod-b"):
            process, _ = daemon(
                ["pod", "start", "--config", f"{pod}.toml"], folder, f"{pod} online"
            )
            pods.append(process)
        for name, task in TASKS.items():
            (folder / f"{name}.toml").write_text(
                f'hub = "{address}"\nidentity = "keys/alice.key"\ntls = {{ca = "hub/tls/ca.crt"}}\n'
                + task
            )
        yield folder
    finally:
        for process in pods:
            stop(process)
        stop(hub)


_FEDAVG = (
    '[task]\nprotocol = "fedavg"\n[task.config.training]\nepochs = 1\nbatch_size = 16\n'
    '[task.config.model]\nname = "mlp"\n'
    "[task.config.model.config]\nin_features = 1\nhidden = [8]\nout_features = 2\n"
)
TASKS = {
    "fedavg": 'pods = ["pod-a", "pod-b"]\nstore = "alice.db"\n'
    "[policy]\ntimeout = 30\n"
    + _FEDAVG.replace(
        "[task.config.training]", "[task.config]\nrounds = 4\n[task.config.training]"
    ),
    "analytics": 'pods = ["pod-a"]\n[task]\nprotocol = "analytics"\n[task.config.request]\n'
    'statistics = ["count", "mean", "quantiles"]\ncolumns = ["x"]\n',
    "long": 'pods = ["pod-a"]\nstore = "long.db"\n'
    + _FEDAVG.replace(
        "[task.config.training]", "[task.config]\nrounds = 30\n[task.config.training]"
    ),
    "too-few": 'pods = ["pod-a", "pod-b"]\nstore = "few.db"\n[policy]\ntimeout = 30\n'
    + _FEDAVG.replace(
        "[task.config.training]", "[task.config]\nmin_pods = 2\n[task.config.training]"
    ),
    "bad-model": 'pods = ["pod-a"]\n' + _FEDAVG.replace('name = "mlp"', 'name = "resnet-9000"'),
}


def test_a_human_summary_shows_rounds_rejections_and_checkpoints(deployment: Path) -> None:
    done = run_cli("run", "fedavg.toml", cwd=deployment)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "1 of 2 pods accepted" in out
    assert REJECTION in out
    assert "FedAvg rounds" in out
    table_rounds = re.findall(r"^│\s+(\d+) │", out, flags=re.MULTILINE)
    assert table_rounds == ["0", "1", "2", "3"]  # numbered as metrics.json numbers them
    experiment = re.search(r"experiment ([0-9a-f]{32}); checkpoints \(the last and the best", out)
    assert experiment is not None, out
    with SqliteExperimentStore(deployment / "alice.db") as store:
        record = store.get_experiment(experiment.group(1))
    assert record.status == "completed" and len(record.checkpoints) <= 2
    assert str(deployment / "checkpoints" / record.experiment_id) in out.replace("\n", "")


def test_json_output_is_one_document_with_each_rejections_message(deployment: Path) -> None:
    done = run_cli("run", "fedavg.toml", "--json", cwd=deployment)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # nothing else on stdout
    assert summary["rejected"] == {
        "pod-b": {"reason": "NO_ACCESS", "message": "protocol 'fedavg' is not allowed on this pod"}
    }
    assert summary["result"]["rounds"] == 4
    kept = summary["checkpoints"]["rounds"]
    assert kept[-1] == 3 and len(kept) <= 2
    assert summary["checkpoints"]["folder"].endswith(summary["experiment_id"])


def test_analytics_prints_a_statistics_table(deployment: Path) -> None:
    done = run_cli("run", "analytics.toml", cwd=deployment)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "statistics over all pods" in done.stdout
    assert re.search(r"│ x\s+│\s+80 │", done.stdout), done.stdout


def _task_runs(pod_store: Path) -> int:
    with SqlitePodStore(pod_store) as store:
        return len(store.task_runs())


def test_an_unknown_model_is_refused_before_any_pod_hears_of_it(deployment: Path) -> None:
    before = _task_runs(deployment / "pod-a.sqlite")
    done = run_cli("run", "bad-model.toml", cwd=deployment)
    assert done.returncode == 3
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "task.config" in lines[0] and "resnet-9000" in lines[0], lines
    assert _task_runs(deployment / "pod-a.sqlite") == before


def test_an_interrupted_run_says_how_to_resume_and_that_command_works(deployment: Path) -> None:
    modeller = subprocess.Popen(
        [*fedloom_command(), "run", "long.toml"],
        cwd=deployment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_rows(deployment / "long.db", "rounds", 2, modeller)
        modeller.send_signal(signal.SIGINT)
        _, stderr = modeller.communicate(timeout=30)
    finally:
        if modeller.poll() is None:
            modeller.kill()
    assert modeller.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert re.search(r"experiment [0-9a-f]{32} stopped after round \d+", stderr), stderr
    command = re.search(r"go on with: fedloom run long\.toml --resume ([0-9a-f]{32})", stderr)
    assert command is not None, stderr
    resumed = run_cli("run", "long.toml", "--json", "--resume", command.group(1), cwd=deployment)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["result"]["rounds"] == 30


def test_a_failed_run_says_which_experiment_stopped(deployment: Path) -> None:
    done = run_cli("run", "too-few.toml", cwd=deployment)
    assert done.returncode == 5
    assert "needs at least 2 pod(s), 1 left" in done.stderr
    assert "pod-b (NO_ACCESS: protocol 'fedavg' is not allowed on this pod)" in done.stderr
    assert re.search(r"experiment [0-9a-f]{32} stopped before its first round", done.stderr)
    assert "go on with: fedloom run too-few.toml --resume" in done.stderr
