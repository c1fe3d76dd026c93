"""Pods sweep the /dev/shm exchange folders that killed pods left (a real dead process)."""

from __future__ import annotations

from pathlib import Path


def test_exchange_folders_of_dead_pods_are_swept(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from fedloom.worker._ipc import sweep_exchange_folders

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(gone.stdout)  # exited; Linux hands out pids in sequence, so not reused yet
    dead = tmp_path / f"fedloom-{dead_pid}-0123456789ab"
    live = tmp_path / f"fedloom-{os.getpid()}-0123456789ab"
    other = tmp_path / "fedloom-sim-0123456789ab"  # a simulation segment: not ours to touch
    for folder in (dead, live):
        folder.mkdir()
        (folder / "frame").write_bytes(b"x")
    other.write_bytes(b"segment")
    assert sweep_exchange_folders(tmp_path) == [dead]
    assert not dead.exists()
    assert live.exists() and other.exists()
