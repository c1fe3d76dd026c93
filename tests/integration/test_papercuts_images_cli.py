"""`fedloom run` on new data only, twice over the same folder, with a real hub and pod.

The second run finds nothing new: that is a success with 0 files (exit code 0), and the
summary names the pod under ``no_new_data``; with ``fail_on_no_new_data = true`` the same
run fails as before (the pod aborts with NO_NEW_DATA).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .cli_kit import daemon, identities, pod_toml, start_hub, stop
from .test_demo_cli import run_cli


def _summary(stdout: str) -> Any:
    """The JSON summary `fedloom run --json` prints (one line)."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, stdout
    return json.loads(lines[-1])


def _task(address: str, extra: str = "") -> str:
    return (
        f'hub = "{address}"\nidentity = "keys/alice.key"\npods = ["pod-a"]\n'
        'dataset = "images"\n[tls]\nca = "hub/tls/ca.crt"\n[policy]\ntimeout = 30\n'
        '[task]\nprotocol = "inference"\n[task.config]\nrun_on_new_data_only = true\n'
        f'{extra}[task.config.model]\nname = "mlp"\n'
        "[task.config.model.config]\nin_features = 48\nhidden = []\nout_features = 2\n"
    )


def test_a_second_run_on_new_data_only_succeeds_with_nothing_to_do(tmp_path: Path) -> None:
    identities(tmp_path)
    (tmp_path / "a.csv").write_text("x,label\n1.0,0\n2.0,1\n")
    (tmp_path / "images").mkdir()
    for index in range(2):
        pixels = np.full((4, 4, 3), index * 90, dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "images" / f"scan-{index:03d}.png")
    hub, address = start_hub(tmp_path)
    try:
        (tmp_path / "pod.toml").write_text(
            pod_toml(address)
            + '[datasets.images]\nkind = "folder"\npath = "images"\npattern = "*.png"\n'
        )
        pod, _ = daemon(["pod", "start", "--config", "pod.toml"], tmp_path, "pod-a online")
        try:
            (tmp_path / "new.toml").write_text(_task(address))
            first = run_cli("run", "new.toml", "--json", cwd=tmp_path)
            assert first.returncode == 0, first.stderr[-3000:]
            assert _summary(first.stdout)["result"] == {
                "files": {"pod-a": 2},
                "failed": {"pod-a": 0},
            }

            second = run_cli("run", "new.toml", "--json", cwd=tmp_path)
            assert second.returncode == 0, second.stderr[-3000:]
            summary = _summary(second.stdout)
            assert summary["aborted"] == {}
            assert summary["result"] == {
                "files": {"pod-a": 0},
                "failed": {"pod-a": 0},
                "no_new_data": ["pod-a"],
            }
            people = run_cli("run", "new.toml", cwd=tmp_path)  # the summary for people
            assert people.returncode == 0, people.stderr[-3000:]
            assert "pod-a: no new files since the last run: nothing to do" in people.stdout

            (tmp_path / "strict.toml").write_text(_task(address, "fail_on_no_new_data = true\n"))
            strict = run_cli("run", "strict.toml", "--json", cwd=tmp_path)
            assert strict.returncode == 5, strict.stderr[-3000:]  # the task failed
            assert "NO_NEW_DATA" in strict.stderr and "Traceback" not in strict.stderr
        finally:
            stop(pod)
    finally:
        stop(hub)
