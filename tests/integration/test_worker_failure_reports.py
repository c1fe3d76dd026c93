"""What the modeller hears when a task fails inside a pod's child process: the reason
(out of memory told apart from other errors, as the simulation does), the exception type
and a bounded traceback summary (DESIGN: TASK_ABORT)."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom import LocalFederation
from fedloom.errors import AbortReason
from fedloom.pod import ArraySource, MemoryPodStore
from fedloom.worker import IsolationSettings

from . import worker_plugins
from .conftest import until_idle

PLUGINS = (worker_plugins.__name__,)  # imported by the children (they share this sys.path)
FAST = IsolationSettings(heartbeat_interval=0.5, heartbeat_patience=4, stop_grace=2.0)


async def _abort_of(error: str) -> tuple[object, MemoryPodStore]:
    store = MemoryPodStore()
    # 16 rows: above the pod's default release threshold, which every protocol passes
    pods = {"pod-a": ArraySource(np.zeros((16, 2), dtype=np.float32))}
    async with LocalFederation(
        pods, pod_stores={"pod-a": store}, isolation=FAST, plugins=PLUGINS
    ) as federation:
        run = await federation.run(worker_plugins.Failing(error=error))
        await until_idle(federation.pods["pod-a"])
    assert run.result == {}
    return run.aborted["pod-a"], store


@pytest.mark.async_timeout(120)
async def test_the_modeller_gets_the_childs_traceback_summary() -> None:
    report, store = await _abort_of("runtime")
    assert report.reason is AbortReason.WORKER_ERROR, report
    assert report.exception_type == "RuntimeError"
    assert "the named helper failed" in report.message
    assert "explode_in_named_helper" in report.traceback_summary, report
    assert "worker_plugins.py:" in report.traceback_summary
    assert [r.reason for r in store.task_runs()] == ["WORKER_ERROR"]


@pytest.mark.parametrize(
    ("error", "exception_type"),
    [("torch-oom", "OutOfMemoryError"), ("cuda-text", "RuntimeError")],
)
@pytest.mark.async_timeout(120)
async def test_torch_out_of_memory_in_a_child_is_worker_out_of_memory(
    error: str, exception_type: str
) -> None:
    report, store = await _abort_of(error)
    assert report.reason is AbortReason.WORKER_OUT_OF_MEMORY, report
    assert report.exception_type == exception_type
    assert "out of memory" in report.message
    assert [r.reason for r in store.task_runs()] == ["WORKER_OUT_OF_MEMORY"]
