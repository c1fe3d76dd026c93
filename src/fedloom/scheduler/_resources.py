"""What a task says it needs, what the user allows, and what the machine has.

:class:`ResourceEstimate` is a task's declaration, :class:`ResourceBudget` the user's caps
(and the way tests pretend to have GPUs), and :class:`ResourceProbe` the machine: the
:class:`SystemProbe` reads it with psutil and, only when asked about devices, torch.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol, runtime_checkable

import psutil

from fedloom.errors import ResourceSpecError
from fedloom.scheduler._sizes import parse_size

CPU_DEVICE = "cpu"
"""The device that has no memory of its own: work on it is charged to system memory."""

_CUDA_DEVICE = re.compile(r"cuda:(\d+)")


def _check_bytes(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ResourceSpecError(
            f"{field} must be a whole number of bytes ≥ 0, got {value!r}; "
            'use ResourceEstimate.of / ResourceBudget.of to pass sizes such as "2GiB"'
        )
    return value


def _check_cpus(field: str, value: object, *, allow_zero: bool) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not allow_zero)
    ):
        bound = "≥ 0" if allow_zero else "> 0"
        raise ResourceSpecError(f"{field} must be a finite number of CPUs {bound}, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ResourceEstimate:
    """How much one task expects to use while it runs.

    Attributes:
        memory: Bytes of system memory (the data that ``load()`` reads, the process).
        gpu_memory: Bytes of device memory that ``train(device)`` needs on a GPU. On the
            CPU device this is charged to system memory instead.
        cpus: CPU cores the task keeps busy (fractions allowed).

    Raises:
        ResourceSpecError: A size that is not a whole number ≥ 0, or ``cpus`` that is
            negative, NaN or infinite.
    """

    memory: int = 0
    gpu_memory: int = 0
    cpus: float = 1.0

    def __post_init__(self) -> None:
        _check_bytes("memory", self.memory)
        _check_bytes("gpu_memory", self.gpu_memory)
        object.__setattr__(self, "cpus", _check_cpus("cpus", self.cpus, allow_zero=True))

    @classmethod
    def of(
        cls,
        memory: int | float | str = 0,
        gpu_memory: int | float | str = 0,
        cpus: float = 1.0,
    ) -> ResourceEstimate:
        """An estimate from sizes written as numbers of bytes or strings (``"456 MB"``).

        Raises:
            ResourceSpecError: A size that :func:`parse_size` cannot read, or bad ``cpus``.
        """
        return cls(parse_size(memory), parse_size(gpu_memory), cpus)

    def raised(self, factor: float) -> ResourceEstimate:
        """This estimate with both memory kinds times ``factor``, rounded up; cpus unchanged.

        Raises:
            ResourceSpecError: ``factor`` is not a finite number ≥ 1.
        """
        if isinstance(factor, bool) or not math.isfinite(factor) or factor < 1:
            raise ResourceSpecError(
                f"an estimate can only be raised by a finite factor ≥ 1, got {factor!r}"
            )
        return dataclasses.replace(
            self,
            memory=math.ceil(self.memory * factor),
            gpu_memory=math.ceil(self.gpu_memory * factor),
        )

    def to_dict(self) -> dict[str, int | float]:
        """The estimate as JSON-able numbers (bytes and cores)."""
        return {"memory": self.memory, "gpu_memory": self.gpu_memory, "cpus": self.cpus}


@dataclass(frozen=True)
class ResourceBudget:
    """Caps the user sets ("use at most 8 GiB"); ``None`` means what the machine has.

    Attributes:
        memory: Bytes of system memory that tasks may reserve together.
        cpus: CPU cores that tasks may reserve together.
        device_memory: Device name (``"cuda:0"``, ...) → bytes tasks may reserve on it.
            When given it also *declares* the devices: exactly these GPUs are used, even
            on a machine where torch sees none (this is how GPU scheduling is tested).

    Raises:
        ResourceSpecError: A negative or non-integer size, non-positive ``cpus``, or a
            device name that is not ``"cuda:<index>"``.
    """

    memory: int | None = None
    cpus: float | None = None
    device_memory: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        if self.memory is not None:
            _check_bytes("budget memory", self.memory)
        if self.cpus is not None:
            object.__setattr__(
                self, "cpus", _check_cpus("budget cpus", self.cpus, allow_zero=False)
            )
        if self.device_memory is not None:
            devices: dict[str, int] = {}
            for name, size in self.device_memory.items():
                if not isinstance(name, str) or not _CUDA_DEVICE.fullmatch(name):
                    raise ResourceSpecError(
                        f"budget device {name!r} is not a GPU name; write 'cuda:0', 'cuda:1', "
                        "... (the CPU is budgeted through `memory`)"
                    )
                devices[name] = _check_bytes(f"budget memory of {name}", size)
            # a private copy, so changing the caller's dict later cannot move the caps
            object.__setattr__(self, "device_memory", MappingProxyType(devices))

    @classmethod
    def of(
        cls,
        memory: int | float | str | None = None,
        cpus: float | None = None,
        device_memory: Mapping[str, int | float | str] | None = None,
    ) -> ResourceBudget:
        """A budget from sizes written as numbers of bytes or strings (``"8 GiB"``).

        Raises:
            ResourceSpecError: A size that :func:`parse_size` cannot read, or bad caps.
        """
        devices = None
        if device_memory is not None:
            devices = {name: parse_size(size) for name, size in device_memory.items()}
        return cls(None if memory is None else parse_size(memory), cpus, devices)


@runtime_checkable
class ResourceProbe(Protocol):
    """What the machine has right now (the ledger reads it once, when it is created)."""

    def available_memory(self) -> int:
        """Bytes of system memory available to new work."""
        ...

    def cpu_count(self) -> float:
        """CPU cores this process may use."""
        ...

    def devices(self) -> list[str]:
        """Device names: ``"cpu"`` first, then ``"cuda:0"``, ``"cuda:1"``, ..."""
        ...

    def free_device_memory(self, device: str) -> int | None:
        """Free bytes on ``device``; ``None`` for ``"cpu"``, which has no memory of its own."""
        ...


class SystemProbe:
    """The real machine: psutil for memory and CPUs, torch.cuda for GPUs.

    torch is imported only by :meth:`devices` and :meth:`free_device_memory`, so a
    CPU-only run never pays for it.
    """

    def available_memory(self) -> int:
        """Bytes of system memory free now (psutil's ``available``)."""
        return int(psutil.virtual_memory().available)

    def cpu_count(self) -> float:
        """The cores this process may run on."""
        if hasattr(os, "sched_getaffinity"):  # the cores this process may run on
            return float(len(os.sched_getaffinity(0)))
        return float(psutil.cpu_count(logical=True) or 1)

    def devices(self) -> list[str]:
        """``"cpu"`` and each CUDA device torch sees."""
        try:
            import torch
        except ImportError:  # pragma: no cover - torch is a dependency
            return [CPU_DEVICE]
        if not torch.cuda.is_available():
            return [CPU_DEVICE]
        return [CPU_DEVICE, *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]

    def free_device_memory(self, device: str) -> int | None:
        """Free bytes on a ``"cuda:<i>"`` device; ``None`` for any other name."""
        match = _CUDA_DEVICE.fullmatch(device)
        if match is None:
            return None
        import torch

        free, _total = torch.cuda.mem_get_info(int(match[1]))
        return int(free)
