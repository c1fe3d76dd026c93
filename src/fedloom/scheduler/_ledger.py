"""Admission: a thread-safe account of what running tasks have reserved.

A :class:`ResourceLedger` holds three limits (system memory, CPUs, memory per GPU), each the
smaller of the user's :class:`ResourceBudget` and what the :class:`ResourceProbe` measured,
less a safety margin on measured memory. A reservation is admitted only if every sum of
live reservations stays within its limit, so the ledger never over-commits, whatever the
number of threads.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field

from fedloom.errors import ConfigError, InsufficientResourcesError
from fedloom.scheduler._resources import (
    CPU_DEVICE,
    ResourceBudget,
    ResourceEstimate,
    ResourceProbe,
    SystemProbe,
)
from fedloom.scheduler._sizes import format_size

DEFAULT_SAFETY_MARGIN = 0.1
"""Share of the measured free memory (system and GPU) the ledger leaves untouched."""

_CPU_UNITS = 1_000_000
"""CPUs are counted in millionths, so that adding and removing 0.1 never drifts."""


def _cpu_units(cpus: float) -> int:
    return math.ceil(cpus * _CPU_UNITS - 1e-6)


@dataclass(frozen=True, eq=False)
class Reservation:
    """Resources held by one task until :meth:`ResourceLedger.release`.

    Attributes:
        device: Where the task may run: ``"cpu"`` or ``"cuda:<index>"``.
        estimate: What was reserved.
    """

    device: str
    estimate: ResourceEstimate
    _memory: int = field(repr=False)
    _owner: object = field(repr=False)


@dataclass
class _Account:
    reserved: int = 0
    limit: int = 0


class ResourceLedger:
    """Thread-safe admission of :class:`ResourceEstimate` against a machine and a budget.

    The system limits are read from the probe when the ledger is created; the GPUs are
    looked up the first time a request involves one (so a CPU-only run never imports
    torch). On the ``"cpu"`` device an estimate's ``gpu_memory`` is charged to system
    memory, since that is where the work then lives.

    Args:
        budget: Caps set by the user; ``None`` uses what the machine has.
        probe: Where the machine's numbers come from; ``None`` is the real machine.
        safety_margin: Share of the *measured* free memory left unused (budgets are
            taken as given).
        gpus: The only GPUs work may be placed on (e.g. those that have workers);
            ``None``: every GPU the budget declares, or else every GPU the probe sees.
            With an empty collection every task runs on the CPU.

    Raises:
        ConfigError: ``safety_margin`` outside ``[0, 1)``, or ``gpus`` names the CPU.
    """

    def __init__(
        self,
        budget: ResourceBudget | None = None,
        probe: ResourceProbe | None = None,
        *,
        safety_margin: float = DEFAULT_SAFETY_MARGIN,
        gpus: Collection[str] | None = None,
    ) -> None:
        if not 0 <= safety_margin < 1:
            raise ConfigError(f"safety_margin must be in [0, 1), got {safety_margin!r}")
        if gpus is not None and CPU_DEVICE in gpus:
            raise ConfigError("gpus lists GPUs only; the CPU is always a device of the ledger")
        self._allowed_gpus = None if gpus is None else frozenset(gpus)
        self.budget = budget if budget is not None else ResourceBudget()
        self.probe: ResourceProbe = probe if probe is not None else SystemProbe()
        self.safety_margin = safety_margin
        measured = int(self.probe.available_memory() * (1 - safety_margin))
        memory_limit = measured if self.budget.memory is None else min(self.budget.memory, measured)
        cpus = self.probe.cpu_count()
        if self.budget.cpus is not None:
            cpus = min(cpus, self.budget.cpus)
        self._memory = _Account(limit=max(memory_limit, 0))
        self._cpus = _Account(limit=_cpu_units(cpus))
        self._devices: dict[str, _Account] | None = None
        self._live: set[Reservation] = set()
        self._cond = threading.Condition()

    # --- limits ---------------------------------------------------------------------

    def _gpus(self) -> dict[str, _Account]:
        """GPU name → account, looked up once (callers hold the lock)."""
        if self._devices is None:
            declared = self.budget.device_memory
            seen = [d for d in self.probe.devices() if d != CPU_DEVICE]
            names = list(declared) if declared is not None else seen
            if self._allowed_gpus is not None:
                names = [name for name in names if name in self._allowed_gpus]
            accounts: dict[str, _Account] = {}
            for name in sorted(names, key=_device_order):
                limit = declared[name] if declared is not None else None
                if name in seen:
                    free = self.probe.free_device_memory(name)
                    if free is not None:
                        measured = int(free * (1 - self.safety_margin))
                        limit = measured if limit is None else min(limit, measured)
                if limit is not None:
                    accounts[name] = _Account(limit=max(limit, 0))
            self._devices = accounts
        return self._devices

    def devices(self) -> list[str]:
        """The devices this ledger schedules on: ``"cpu"`` and the GPUs it may use."""
        with self._cond:
            return [CPU_DEVICE, *self._gpus()]

    # --- admission ------------------------------------------------------------------

    def _place(self, estimate: ResourceEstimate, device: str | None) -> tuple[str, int]:
        """The device for ``estimate`` and the system memory it costs there.

        Raises InsufficientResourcesError when the estimate could never fit.
        """
        if not isinstance(estimate, ResourceEstimate):
            raise ConfigError(f"expected a ResourceEstimate, got {type(estimate).__name__}")
        if device is None:
            gpus = self._gpus() if estimate.gpu_memory > 0 else {}
            if gpus:
                fitting = {n: a for n, a in gpus.items() if estimate.gpu_memory <= a.limit}
                if not fitting:
                    largest = max(gpus.items(), key=lambda item: item[1].limit)
                    raise self._never_fits("GPU memory", estimate.gpu_memory, *largest)
                device = max(fitting, key=lambda n: fitting[n].limit - fitting[n].reserved)
            else:
                device = CPU_DEVICE
        elif device != CPU_DEVICE:
            gpus = self._gpus()
            if device not in gpus:
                known = ", ".join([CPU_DEVICE, *gpus])
                raise ConfigError(f"unknown device {device!r}; this ledger schedules on: {known}")
            if estimate.gpu_memory > gpus[device].limit:
                raise self._never_fits("GPU memory", estimate.gpu_memory, device, gpus[device])
        charged = estimate.memory + (estimate.gpu_memory if device == CPU_DEVICE else 0)
        if charged > self._memory.limit:
            raise self._never_fits("memory", charged, "system", self._memory)
        if _cpu_units(estimate.cpus) > self._cpus.limit:
            raise InsufficientResourcesError(
                f"the task needs {estimate.cpus:g} CPUs but at most "
                f"{self._cpus.limit / _CPU_UNITS:g} may be used; lower its cpus estimate or "
                "raise the budget's cpus"
            )
        return device, charged

    def _never_fits(
        self, kind: str, needed: int, where: str, account: _Account
    ) -> InsufficientResourcesError:
        return InsufficientResourcesError(
            f"the task needs {format_size(needed)} of {kind} but {where} allows at most "
            f"{format_size(account.limit)} (the smaller of the budget and the free memory "
            f"less a {self.safety_margin:.0%} margin); lower the estimate, raise the budget "
            "or use a bigger machine"
        )

    def _fits_now(self, estimate: ResourceEstimate, device: str, charged: int) -> bool:
        if self._memory.reserved + charged > self._memory.limit:
            return False
        if self._cpus.reserved + _cpu_units(estimate.cpus) > self._cpus.limit:
            return False
        if device == CPU_DEVICE:
            return True
        gpu = self._gpus()[device]
        return gpu.reserved + estimate.gpu_memory <= gpu.limit

    def _take(self, estimate: ResourceEstimate, device: str, charged: int) -> Reservation:
        reservation = Reservation(device, estimate, charged, self)
        self._memory.reserved += charged
        self._cpus.reserved += _cpu_units(estimate.cpus)
        if device != CPU_DEVICE:
            self._gpus()[device].reserved += estimate.gpu_memory
        self._live.add(reservation)
        return reservation

    def check(self, estimate: ResourceEstimate, device: str | None = None) -> str:
        """The device ``estimate`` would get, raising if it could never fit (reserves nothing).

        Raises:
            InsufficientResourcesError: More than a limit, even with nothing reserved.
            ConfigError: ``device`` is not one this ledger schedules on.
        """
        with self._cond:
            return self._place(estimate, device)[0]

    def try_reserve(
        self, estimate: ResourceEstimate, device: str | None = None
    ) -> Reservation | None:
        """Reserve ``estimate`` if it fits now; ``None`` if it has to wait.

        Args:
            estimate: What to reserve.
            device: ``"cpu"``, a GPU name, or ``None`` to choose: the GPU with the most room
                when the estimate has ``gpu_memory`` and the ledger has GPUs, else the CPU.

        Raises:
            InsufficientResourcesError: More than a limit, even with nothing reserved.
            ConfigError: ``device`` is not one this ledger schedules on.
        """
        with self._cond:
            device, charged = self._place(estimate, device)
            if not self._fits_now(estimate, device, charged):
                return None
            return self._take(estimate, device, charged)

    def reserve(
        self, estimate: ResourceEstimate, device: str | None = None, timeout: float | None = None
    ) -> Reservation:
        """Reserve ``estimate``, waiting until running tasks release enough.

        Raises:
            InsufficientResourcesError: More than a limit, even with nothing reserved.
            ConfigError: ``device`` is not one this ledger schedules on.
            TimeoutError: It did not fit within ``timeout`` seconds.
        """
        reservation = self._wait(estimate, device, timeout, None)
        if reservation is None:
            raise TimeoutError(
                f"{format_size(estimate.memory)} of memory, {format_size(estimate.gpu_memory)} "
                f"of GPU memory and {estimate.cpus:g} CPUs did not fit within {timeout} s; "
                "release reservations or wait longer"
            )
        return reservation

    def reserve_unless(
        self, estimate: ResourceEstimate, cancel: threading.Event, device: str | None = None
    ) -> Reservation | None:
        """Like :meth:`reserve`, but gives up (``None``) once ``cancel`` is set.

        Whoever sets ``cancel`` calls :meth:`wake_waiters` so that the wait notices.

        Raises:
            InsufficientResourcesError: More than a limit, even with nothing reserved.
            ConfigError: ``device`` is not one this ledger schedules on.
        """
        return self._wait(estimate, device, None, cancel)

    def _wait(
        self,
        estimate: ResourceEstimate,
        device: str | None,
        timeout: float | None,
        cancel: threading.Event | None,
    ) -> Reservation | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if cancel is not None and cancel.is_set():
                    return None
                # placed again on every wake-up: the GPU with the most room may have changed
                chosen, charged = self._place(estimate, device)
                if self._fits_now(estimate, chosen, charged):
                    return self._take(estimate, chosen, charged)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def wake_waiters(self) -> None:
        """Wake every waiting :meth:`reserve_unless` so it checks its cancel event."""
        with self._cond:
            self._cond.notify_all()

    def release(self, reservation: Reservation) -> None:
        """Give back a reservation; releasing it again does nothing.

        Raises:
            ConfigError: The reservation was made by another ledger.
        """
        if reservation._owner is not self:
            raise ConfigError("this reservation belongs to another ResourceLedger")
        with self._cond:
            if reservation not in self._live:
                return
            self._live.discard(reservation)
            self._memory.reserved -= reservation._memory
            self._cpus.reserved -= _cpu_units(reservation.estimate.cpus)
            if reservation.device != CPU_DEVICE:
                self._gpus()[reservation.device].reserved -= reservation.estimate.gpu_memory
            self._cond.notify_all()

    def snapshot(self) -> dict[str, object]:
        """Reserved amounts and limits now: bytes for memory, cores for CPUs."""
        with self._cond:
            return {
                "memory": {"reserved": self._memory.reserved, "limit": self._memory.limit},
                "cpus": {
                    "reserved": self._cpus.reserved / _CPU_UNITS,
                    "limit": self._cpus.limit / _CPU_UNITS,
                },
                "devices": {
                    name: {"reserved": a.reserved, "limit": a.limit}
                    for name, a in self._gpus().items()
                },
                "reservations": len(self._live),
            }


def _device_order(name: str) -> tuple[int, str]:
    index = name.rpartition(":")[2]
    return (int(index) if index.isdigit() else 0, name)
