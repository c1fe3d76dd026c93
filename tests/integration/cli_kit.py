"""Real `fedloom` commands as a user runs them, each in its own process."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterable
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


def identities(folder: Path, pods: Iterable[str] = ("pod-a",), modeller: str = "alice") -> None:
    """``fedloom keys new`` for the modeller and each pod in ``folder/keys``, ``fedloom hub
    init`` in ``folder/hub``, and ``fedloom hub register`` of each with its role."""
    pods = list(pods)
    for name in (modeller, *pods):
        done = run_cli("keys", "new", name, "--dir", "keys", cwd=folder)
        assert done.returncode == 0, done.stderr
    assert run_cli("hub", "init", "--data-dir", "hub", cwd=folder).returncode == 0
    register(folder, modeller, "modeller")
    for pod in pods:
        register(folder, pod, "pod")


def rows_in(store: Path, table: str) -> int:
    """Rows of ``table`` in a SQLite store another process writes (0 before it exists)."""
    if not store.exists():
        return 0
    connection = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5)
    try:
        return int(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    except sqlite3.OperationalError:  # the schema is not written yet
        return 0
    finally:
        connection.close()


def wait_for_rows(
    store: Path, table: str, count: int, process: subprocess.Popen[str], seconds: float = 120
) -> None:
    """Wait until ``table`` of ``store`` holds ``count`` rows while ``process`` runs."""
    deadline = time.monotonic() + seconds
    while rows_in(store, table) < count:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"{store.name} never had {count} {table}"
        time.sleep(0.02)


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
