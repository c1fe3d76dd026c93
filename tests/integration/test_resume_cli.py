"""`fedloom run` SIGKILLed mid-experiment, then `fedloom run --resume`: nothing is lost.

Real processes throughout: a hub, a pod daemon (one task slot, modeller_timeout = 3 s)
and two modeller processes. The killed modeller's task keeps the pod's only slot until
the pod stops hearing from it; the resumed run then goes on from the last checkpoint and
finishes the same experiment with every round recorded once.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from fedloom import SqliteExperimentStore
from fedloom.errors import AbortReason
from fedloom.pod import SqlitePodStore

from .cli_kit import daemon, identities, pod_toml, start_hub, stop, wait_for_rows
from .test_demo_cli import fedloom_command, run_cli

ROUNDS = 12


def _setup(folder: Path) -> None:
    identities(folder)
    rng = np.random.default_rng(0)
    data = pd.DataFrame(rng.normal(size=(120, 4)), columns=["a", "b", "c", "d"])
    data["label"] = (data["a"] > 0).astype(int)
    data.to_csv(folder / "a.csv", index=False)


def test_a_killed_modeller_resumes_its_experiment_from_the_command_line(tmp_path: Path) -> None:
    _setup(tmp_path)
    hub, address = start_hub(tmp_path)
    try:
        (tmp_path / "pod.toml").write_text(
            pod_toml(address, top="max_concurrent_tasks = 1\n", policy="modeller_timeout = 3\n")
        )
        pod, _ = daemon(["pod", "start", "--config", "pod.toml"], tmp_path, "pod-a online")
        try:
            (tmp_path / "task.toml").write_text(
                f'hub = "{address}"\nidentity = "keys/alice.key"\npods = ["pod-a"]\n'
                'store = "alice.db"\nname = "resumable"\nkeep_checkpoints = "all"\n'
                '[tls]\nca = "hub/tls/ca.crt"\n'
                '[task]\nprotocol = "fedavg"\n'
                f"[task.config]\nrounds = {ROUNDS}\nseed = 5\n"
                "[task.config.training]\nepochs = 2\nbatch_size = 8\n"
                '[task.config.model]\nname = "mlp"\n'
                "[task.config.model.config]\nin_features = 4\nhidden = [16]\nout_features = 2\n"
            )
            modeller = subprocess.Popen(
                [*fedloom_command(), "run", "task.toml", "--json"],
                cwd=tmp_path,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            wait_for_rows(tmp_path / "alice.db", "checkpoints", 2, modeller)
            modeller.send_signal(signal.SIGKILL)
            modeller.communicate(timeout=30)
            with SqliteExperimentStore(tmp_path / "alice.db") as store:
                (crashed,) = store.list_experiments()
            assert crashed.status == "running"
            done_before = len(crashed.checkpoints)
            assert 2 <= done_before < ROUNDS

            done = run_cli(
                "run", "task.toml", "--json", "--resume", crashed.experiment_id, cwd=tmp_path
            )
            assert done.returncode == 0, done.stderr[-3000:]
            summary = json.loads(done.stdout)
            assert summary["experiment_id"] == crashed.experiment_id
            assert summary["result"]["rounds"] == ROUNDS
        finally:
            stop(pod)
    finally:
        stop(hub)

    with SqliteExperimentStore(tmp_path / "alice.db") as store:
        (record,) = store.list_experiments()
        assert record.status == "completed" and record.name == "resumable"
        assert [r.round_index for r in record.rounds] == list(range(ROUNDS))
        assert [c.round_index for c in record.checkpoints] == list(range(ROUNDS))
    with SqlitePodStore(tmp_path / "pod-a.sqlite") as pod_store:
        runs = sorted(pod_store.task_runs(), key=lambda run: run.started_at)
    # the killed modeller's task ended when the pod stopped hearing from it, freeing the
    # pod's one slot for the resumed run
    assert [(run.status, run.reason) for run in runs] == [
        ("aborted", AbortReason.MODELLER_TIMEOUT.value),
        ("completed", None),
    ]
    # FedAvg records a round's metrics before its checkpoint: every checkpointed round is
    # complete, so the resumed run trained exactly the rounds that had none
    assert runs[1].result is not None
    assert runs[1].result["rounds"] == list(range(done_before, ROUNDS))
