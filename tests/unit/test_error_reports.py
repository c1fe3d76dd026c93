"""Error reports classify out-of-memory failures with the scheduler's own classifier."""

from __future__ import annotations

import pytest
import torch

from fedloom import errors, scheduler
from fedloom.errors import AbortReason, ConfigError, ErrorReport


def test_there_is_one_out_of_memory_classifier() -> None:
    assert scheduler.is_out_of_memory is errors.is_out_of_memory
    assert scheduler.is_device_out_of_memory is errors.is_device_out_of_memory


@pytest.mark.parametrize(
    "error",
    [
        MemoryError("Unable to allocate 2.00 GiB"),
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"),
        RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 8 GB"),
    ],
    ids=["memory", "torch", "cuda-text", "cpu-allocator"],
)
def test_out_of_memory_reports_worker_out_of_memory(error: BaseException) -> None:
    report = ErrorReport.from_exception(error)
    assert report.reason is AbortReason.WORKER_OUT_OF_MEMORY
    assert report.exception_type == type(error).__name__


def test_other_errors_keep_their_reasons() -> None:
    assert ErrorReport.from_exception(RuntimeError("boom")).reason is AbortReason.WORKER_ERROR
    assert ErrorReport.from_exception(ValueError("out of memory")).reason is (
        AbortReason.WORKER_ERROR
    )
    assert ErrorReport.from_exception(ConfigError("bad")).reason is AbortReason.INVALID_TASK
