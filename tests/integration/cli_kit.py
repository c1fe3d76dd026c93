"""Real `fedloom` commands as a user runs them, each in its own process."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from .test_demo_cli import fedloom_command, run_cli


def daemon(args: list[str], cwd: Path, ready: str) -> tuple[subprocess.Popen[str], str]:
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


def stop(process: subprocess.Popen[str]) -> str:
    """SIGTERM a daemon; it must end cleanly (exit code 0, no traceback)."""
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
    return stderr


def register(folder: Path, name: str, role: str) -> None:
    """``fedloom hub register`` a key made by ``fedloom keys new`` in ``folder/keys``."""
    done = run_cli(
        "hub",
        "register",
        f"keys/{name}.pub.json",
        "--role",
        role,
        "--data-dir",
        "hub",
        cwd=folder,
    )
    assert done.returncode == 0, done.stderr


def start_hub(folder: Path) -> tuple[subprocess.Popen[str], str]:
    """``fedloom hub start`` on a free port of ``folder/hub``; the process and its address."""
    hub, ready = daemon(
        ["hub", "start", "--data-dir", "hub", "--port", "0"], folder, "listening on"
    )
    return hub, ready.rsplit(" ", 1)[1]


def pod_toml(address: str, *, top: str = "", policy: str = "", rest: str = "") -> str:
    """pod-a's config for the hub at ``address``, modeller alice, the CSV dataset a.csv."""
    return (
        f'name = "pod-a"\nhub = "{address}"\nidentity = "keys/pod-a.key"\n'
        f'store = "pod-a.sqlite"\n{top}[tls]\nca = "hub/tls/ca.crt"\n'
        f'[policy]\nmodellers = ["alice"]\n{policy}{rest}'
        '[datasets.default]\nkind = "csv"\npath = "a.csv"\nlabel_column = "label"\n'
    )
