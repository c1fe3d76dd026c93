"""Sizes as text ("456 MB"), resource estimates and budgets, and out-of-memory detection."""

from __future__ import annotations

import math
from decimal import Decimal

import numpy as np
import pytest
import torch

from fedloom.errors import ConfigError, ResourceSpecError
from fedloom.scheduler import (
    ResourceBudget,
    ResourceEstimate,
    SystemProbe,
    format_size,
    is_device_out_of_memory,
    is_out_of_memory,
    parse_size,
)

KB, MB, GB, TB = 10**3, 10**6, 10**9, 10**12
KIB, MIB, GIB, TIB = 2**10, 2**20, 2**30, 2**40


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (1024, 1024),
        (1.5, 2),  # fractions of a byte round up: an estimate is an upper bound
        (2.0, 2),
        (np.int64(7), 7),
        (np.float32(3.0), 3),
        ("0", 0),
        ("1024", 1024),
        ("12 B", 12),
        ("456 MB", 456 * MB),
        ("456MB", 456 * MB),
        ("456 mb", 456 * MB),
        ("456 Mb", 456 * MB),
        ("1.5 GB", 1_500_000_000),
        ("1 KB", KB),
        ("1 kB", KB),
        ("2 TB", 2 * TB),
        ("2GiB", 2 * GIB),
        ("2 gib", 2 * GIB),
        ("512 MiB", 512 * MIB),
        ("64 KiB", 64 * KIB),
        ("1 TiB", TIB),
        ("  3 GB  ", 3 * GB),
        ("0.1 KB", 100),  # exact decimal arithmetic: not 101 after rounding up
        ("0.5 B", 1),
        (".5 KiB", 512),
        ("1e3", 1000),
        ("1.5e3 MB", 1500 * MB),
        ("+4 MB", 4 * MB),
    ],
)
def test_parse_size_reads_numbers_and_units(value: int | float | str, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        (-1, "negative"),
        (-0.5, "negative"),
        ("-5 MB", "negative"),
        (float("nan"), "finite"),
        (float("inf"), "finite"),
        ("nan", "expected a number"),
        ("inf GB", "expected a number"),
        ("12 parsecs", "unknown unit 'parsecs'"),
        ("5 MBs", "unknown unit"),
        ("5 Mi", "unknown unit"),
        ("GB", "expected a number"),
        ("five MB", "expected a number"),
        ("1,5 GB", "expected a number"),
        ("1 2 MB", "expected a number"),
        ("1e999 GB", "too large"),
        (True, "bool"),
        (False, "bool"),
        (None, "NoneType"),
        ([1], "list"),
        (Decimal("1"), "got Decimal"),
    ],
)
def test_parse_size_rejects_with_the_value_and_the_valid_units(value: object, why: str) -> None:
    with pytest.raises(ResourceSpecError) as caught:
        parse_size(value)  # type: ignore[arg-type]
    text = str(caught.value)
    assert repr(value) in text
    assert why in text
    assert "KiB, MiB, GiB, TiB" in text and "KB, MB, GB" in text


def test_a_size_error_is_a_config_error() -> None:
    assert issubclass(ResourceSpecError, ConfigError)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (3 * GIB // 2, "1.5 GiB"),
        (512 * MIB, "512 MiB"),
        (456 * MB, "434.9 MiB"),
        (2 * TIB, "2 TiB"),
        (-2048, "-2 KiB"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


def test_format_size_round_trips_through_parse_size_within_rounding() -> None:
    for size in (1, 999, 4096, 123 * MIB, 7 * GIB + 1):
        assert math.isclose(parse_size(format_size(size)), size, rel_tol=0.05)


# --- estimates and budgets --------------------------------------------------------------


def test_estimate_of_reads_text_and_numbers() -> None:
    estimate = ResourceEstimate.of(memory="456 MB", gpu_memory="2GiB", cpus=0.5)
    assert estimate == ResourceEstimate(456 * MB, 2 * GIB, 0.5)
    assert ResourceEstimate.of(memory=1000) == ResourceEstimate(memory=1000)
    assert estimate.to_dict() == {"memory": 456 * MB, "gpu_memory": 2 * GIB, "cpus": 0.5}


def test_estimate_raised_rounds_up_and_keeps_cpus() -> None:
    raised = ResourceEstimate(memory=3, gpu_memory=10, cpus=2).raised(1.5)
    assert raised == ResourceEstimate(memory=5, gpu_memory=15, cpus=2.0)
    assert ResourceEstimate(memory=0).raised(2).memory == 0
    for factor in (0.5, math.nan, math.inf):
        with pytest.raises(ResourceSpecError, match="factor"):
            ResourceEstimate(memory=1).raised(factor)


@pytest.mark.parametrize(
    "fields",
    [
        {"memory": -1},
        {"memory": 1.5},
        {"memory": "1 GB"},
        {"gpu_memory": True},
        {"cpus": -1.0},
        {"cpus": math.nan},
        {"cpus": "2"},
    ],
)
def test_estimate_rejects_bad_fields(fields: dict[str, object]) -> None:
    with pytest.raises(ResourceSpecError):
        ResourceEstimate(**fields)  # type: ignore[arg-type]


def test_estimate_of_rejects_unreadable_sizes() -> None:
    with pytest.raises(ResourceSpecError, match="12 parsecs"):
        ResourceEstimate.of(memory="12 parsecs")


def test_budget_of_reads_text_and_copies_the_device_map() -> None:
    devices: dict[str, int | float | str] = {"cuda:1": "4GiB", "cuda:0": 8 * GIB}
    budget = ResourceBudget.of(memory="8 GiB", cpus=2, device_memory=devices)
    devices["cuda:0"] = 1
    assert budget.memory == 8 * GIB
    assert budget.cpus == 2.0
    assert dict(budget.device_memory or {}) == {"cuda:1": 4 * GIB, "cuda:0": 8 * GIB}
    with pytest.raises(TypeError):
        budget.device_memory["cuda:0"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"memory": -1}, "budget memory"),
        ({"cpus": 0}, "budget cpus"),
        ({"cpus": -2}, "budget cpus"),
        ({"device_memory": {"cpu": 10}}, "not a GPU name"),
        ({"device_memory": {"gpu0": 10}}, "not a GPU name"),
        ({"device_memory": {"cuda:0": -1}}, "cuda:0"),
    ],
)
def test_budget_rejects_bad_caps(fields: dict[str, object], match: str) -> None:
    with pytest.raises(ResourceSpecError, match=match):
        ResourceBudget(**fields)  # type: ignore[arg-type]


def test_system_probe_reads_this_machine() -> None:
    probe = SystemProbe()
    assert probe.available_memory() > 0
    assert probe.cpu_count() >= 1
    devices = probe.devices()
    assert devices[0] == "cpu"
    assert probe.free_device_memory("cpu") is None
    if not torch.cuda.is_available():
        assert devices == ["cpu"]


# --- out of memory ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        MemoryError(),
        MemoryError("Unable to allocate 2.00 GiB"),
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:83] DefaultCPUAllocator: not enough memory"),
        RuntimeError("MPS backend out of memory"),
    ],
)
def test_out_of_memory_errors_are_recognised(error: BaseException) -> None:
    assert is_out_of_memory(error)


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("shape mismatch"),
        ValueError("out of memory"),  # only allocators' RuntimeErrors carry the phrase
        KeyError("memory"),
        OSError(12, "Cannot allocate memory"),
    ],
)
def test_other_errors_are_not_out_of_memory(error: BaseException) -> None:
    assert not is_out_of_memory(error)


def test_an_error_raised_from_an_out_of_memory_error_counts() -> None:
    try:
        try:
            raise MemoryError("no room")
        except MemoryError as inner:
            raise ValueError("the batch failed") from inner
    except ValueError as outer:
        assert is_out_of_memory(outer)


def test_device_out_of_memory_is_told_from_system_out_of_memory() -> None:
    assert is_device_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_device_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 1 GiB"))
    assert not is_device_out_of_memory(MemoryError("CUDA out of memory"))
    assert not is_device_out_of_memory(RuntimeError("DefaultCPUAllocator: not enough memory"))
