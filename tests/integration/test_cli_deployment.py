"""The deployment a user does by hand, with the real commands, each in its own process.

fedloom keys new → fedloom hub init → fedloom hub register → fedloom hub start →
fedloom pod start --config pod.toml → fedloom run TASK.toml.
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd

from .test_demo_cli import fedloom_command, run_cli


def _daemon(args: list[str], cwd: Path, ready: str) -> tuple[subprocess.Popen[str], str]:
    """Start a daemon command and wait for its ready line (returned)."""
    process = subprocess.Popen(
        [*fedloom_command(), *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if ready not in line:
        process.kill()
        _, stderr = process.communicate(timeout=20)
        raise AssertionError(f"{args[:2]} did not start: {line!r} {stderr}")
    return process, line.strip()


def _stop(process: subprocess.Popen[str]) -> str:
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    return stderr


def test_keys_hub_pod_and_run_from_the_command_line(tmp_path: Path) -> None:
    for name in ("alice", "pod-a"):
        done = run_cli("keys", "new", name, "--dir", "keys", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "keys" / "alice.key").stat().st_mode & 0o777 == 0o600
    again = run_cli("keys", "new", "alice", "--dir", "keys", cwd=tmp_path)
    assert again.returncode == 3 and "already exists" in again.stderr  # never overwritten

    assert run_cli("hub", "init", "--data-dir", "hub", cwd=tmp_path).returncode == 0
    for name, role in (("alice", "modeller"), ("pod-a", "pod")):
        done = run_cli(
            "hub",
            "register",
            f"keys/{name}.pub.json",
            "--role",
            role,
            "--data-dir",
            "hub",
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
    bad_role = run_cli(
        "hub",
        "register",
        "keys/alice.pub.json",
        "--role",
        "admin",
        "--data-dir",
        "hub",
        cwd=tmp_path,
    )
    assert bad_role.returncode == 3 and "Traceback" not in bad_role.stderr

    data = pd.DataFrame({"x": np.arange(50, dtype=float), "label": np.arange(50) % 2})
    data.to_csv(tmp_path / "a.csv", index=False)
    hub, ready = _daemon(
        ["hub", "start", "--data-dir", "hub", "--port", "0"], tmp_path, "listening on"
    )
    try:
        address = ready.rsplit(" ", 1)[1]
        (tmp_path / "pod.toml").write_text(
            f'name = "pod-a"\nhub = "{address}"\nidentity = "keys/pod-a.key"\n'
            'store = "pod-a.sqlite"\n[tls]\nca = "hub/tls/ca.crt"\n'
            '[policy]\nmodellers = ["alice"]\n[modeller_keys]\nalice = "keys/alice.pub.json"\n'
            '[datasets.default]\nkind = "csv"\npath = "a.csv"\nlabel_column = "label"\n'
        )
        pod, _ = _daemon(["pod", "start", "--config", "pod.toml"], tmp_path, "pod-a online")
        try:
            (tmp_path / "task.toml").write_text(
                f'hub = "{address}"\nidentity = "keys/alice.key"\npods = ["pod-a"]\n'
                '[tls]\nca = "hub/tls/ca.crt"\n[pod_keys]\n"pod-a" = "keys/pod-a.pub.json"\n'
                "[policy]\ntimeout = 30\nrequire_all = true\n"
                '[task]\nprotocol = "analytics"\n[task.config.request]\n'
                'statistics = ["count", "mean"]\ncolumns = ["x"]\n'
            )
            done = run_cli("run", "task.toml", "--json", cwd=tmp_path)
            assert done.returncode == 0, done.stderr[-3000:]
            summary = json.loads(done.stdout)
            assert summary["accepted"] == ["pod-a"]
            assert summary["result"]["statistics"]["x"]["count"] == 50
            assert summary["result"]["statistics"]["x"]["mean"] == 24.5
        finally:
            _stop(pod)
    finally:
        _stop(hub)


def test_the_readme_config_files_load(tmp_path: Path) -> None:
    from fedloom import Identity, load_pod_config, load_task_file, save_identity

    from .test_demo_cli import README

    blocks = README.read_text(encoding="utf-8").split("```toml\n")[1:]
    texts = {block.split("\n", 1)[0].strip("# ").strip(): block.split("```")[0] for block in blocks}
    assert set(texts) >= {"pod.toml (relative paths are relative to this file)", "task.toml"}
    for name in ("alice", "pod-a"):
        save_identity(Identity.generate(name), tmp_path / "keys")
    for name, text in texts.items():
        (tmp_path / name.split(" ")[0]).write_text(text)
    pod = load_pod_config(tmp_path / "pod.toml")
    assert pod.policy.allowed_modellers == frozenset({"alice"})
    assert pod.max_concurrent_tasks == 2
    assert pod.policy.allowed_algorithms == frozenset({"mlp", "dataset_summary"})
    assert pod.policy.usage_limits == {"mlp": 100000}
    task = load_task_file(tmp_path / "task.toml")
    assert task.pods == ("pod-a",) and task.protocol.name == "analytics"
