"""A real out-of-memory error: a task's child process hits its address-space limit.

The task's ``train()`` starts a fresh Python (as the ``spawn`` start method would) that
limits its own address space with ``RLIMIT_AS`` and then allocates with numpy. The first
try asks for more than the limit and gets a real ``MemoryError``; the scheduler marks the
task INTERRUPT, raises its estimate and runs it again, and the smaller allocation fits.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fedloom.scheduler import (
    ResourceBudget,
    ResourceEstimate,
    ResourceLedger,
    TaskStatus,
    parse_size,
)
from fedloom.simulation._scheduler import Scheduler

pytest.importorskip("resource", reason="RLIMIT_AS needs a POSIX system")

CHILD_LIMIT = parse_size("1.5 GiB")
OOM_EXIT = 75
CHILD = """
import resource, sys
limit, size, oom_exit = (int(arg) for arg in sys.argv[1:])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
import numpy as np
try:
    block = np.ones(size, dtype=np.uint8)
except MemoryError as exc:
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
    sys.exit(oom_exit)
print(int(block[:: 1 << 20].sum()))
"""


def allocate_in_child(size: int, limit: int = CHILD_LIMIT) -> int:
    """Allocate ``size`` bytes in a child limited to ``limit`` bytes of address space."""
    # one BLAS thread: each thread's buffers would take address space from the limit
    env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(limit), str(size), str(OOM_EXIT)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    if done.returncode == OOM_EXIT:
        raise MemoryError(f"the child could not allocate {size} bytes: {done.stderr.strip()}")
    if done.returncode != 0:
        raise RuntimeError(f"the child failed ({done.returncode}): {done.stderr.strip()}")
    return int(done.stdout)


@dataclass
class AllocatingTask:
    """Wants 2 GiB on the first try, then 64 MiB (as a smaller batch would)."""

    name: str = "allocate"
    group: str = "oom"
    estimate: ResourceEstimate = field(default_factory=lambda: ResourceEstimate.of("1 GiB"))
    sizes: list[int] = field(default_factory=lambda: [parse_size("2GiB"), parse_size("64 MiB")])
    tried: list[int] = field(default_factory=list)

    def load(self) -> None:
        pass

    def train(self, device: str) -> object:
        size = self.sizes[min(len(self.tried), len(self.sizes) - 1)]
        self.tried.append(size)
        return allocate_in_child(size)


def test_a_real_memory_error_is_interrupted_and_retried(tmp_path: Path) -> None:
    seen: list[TaskStatus] = []
    lock = threading.Lock()

    def on_status(name: str, status: TaskStatus) -> None:
        with lock:
            seen.append(status)

    task = AllocatingTask()
    ledger = ResourceLedger(ResourceBudget.of(memory="4 GiB", cpus=1))
    report = Scheduler(ledger, growth=1.5, on_status=on_status).run([task])

    entry = report.by_name("allocate")
    assert task.tried == [parse_size("2GiB"), parse_size("64 MiB")]
    assert seen.count(TaskStatus.INTERRUPT) == 1
    assert seen.index(TaskStatus.INTERRUPT) < seen.index(TaskStatus.FINISHED)
    assert seen[-1] is TaskStatus.FINISHED
    assert entry.status is TaskStatus.FINISHED
    assert entry.result == 64  # one byte counted per MiB
    (interrupt,) = entry.interrupts
    assert interrupt.error_type == "MemoryError"
    assert "could not allocate" in interrupt.message
    assert "MemoryError" in interrupt.message  # numpy's own error, from the child
    assert interrupt.estimate == ResourceEstimate.of("1 GiB")
    assert entry.estimate == ResourceEstimate.of("1.5 GiB")
    assert ledger.snapshot()["reservations"] == 0

    (path,) = report.write(tmp_path)
    assert path.name == "oom.json"
    assert '"interrupted_and_retried"' in path.read_text()
