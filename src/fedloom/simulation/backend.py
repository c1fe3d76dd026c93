"""The simulation Backend contract: who trains the virtual clients, and where.

The engine (:mod:`fedloom.simulation.engine`) owns rounds, sampling, scheduling and the
ordered fold; a backend only runs client jobs. Implementations: the process pool
(persistent spawned workers, shared memory), the thread pool (one process; for
free-threaded Python or I/O-bound clients) and Ray (past one machine).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import torch

from fedloom.simulation.client import ClientJob, ClientOutcome, RunnerPlan
from fedloom.simulation.shm import FlatLayout

__all__ = [
    "Backend",
    "BackendPlan",
    "ClientFailure",
    "ClientResult",
    "FailureKind",
    "START_METHODS",
    "worker_devices",
]

START_METHODS = ("auto", "spawn", "forkserver", "fork")
"""How the process pool starts its workers; ``auto`` forks when that is safe."""


_MAX_MESSAGE = 2000


def worker_devices(device: str, device_count: int, workers: int) -> list[str]:
    """Devices of ``workers`` workers: round-robin over ``device_count`` devices."""
    if device == "cpu" or (device_count <= 1 and ":" in device):
        return [device] * workers
    return [f"{device}:{index % device_count}" for index in range(workers)]


@dataclass(frozen=True)
class BackendPlan:
    """How many workers, on which devices, building which runner."""

    runner: RunnerPlan
    layout: FlatLayout
    devices: tuple[str, ...]  # one per worker

    @property
    def workers(self) -> int:
        return len(self.devices)


class FailureKind(StrEnum):
    """Why a client job produced no update."""

    OUT_OF_MEMORY = "out_of_memory"  # re-queued with a raised estimate
    ERROR = "error"  # the client's own code or data failed
    NON_FINITE = "non_finite"  # the update holds NaN or Inf: left out of the fold
    WORKER_LOST = "worker_lost"  # the worker died; the job is re-run elsewhere
    STOPPED = "stopped"  # the stop event interrupted it


@dataclass(frozen=True)
class ClientFailure:
    """Why a job produced no update; travels between processes as :meth:`to_body`."""

    kind: FailureKind
    error_type: str
    message: str

    @classmethod
    def of(cls, exc: BaseException) -> ClientFailure:
        """The failure an exception in a client's job means (out of memory, or an error)."""
        from fedloom.scheduler import is_out_of_memory

        kind = FailureKind.OUT_OF_MEMORY if is_out_of_memory(exc) else FailureKind.ERROR
        return cls(kind, type(exc).__name__, f"{exc}"[:_MAX_MESSAGE] or type(exc).__name__)

    def to_body(self) -> dict[str, Any]:
        """``{"failure": {...}}``, to merge into a msgpack reply."""
        return {
            "failure": {
                "kind": self.kind.value,
                "error_type": self.error_type,
                "message": self.message,
            }
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ClientFailure:
        """Read :meth:`to_body`'s ``failure`` entry (missing fields read as an error)."""
        return cls(
            FailureKind(body.get("kind", FailureKind.ERROR.value)),
            str(body.get("error_type", "")),
            str(body.get("message", "")),
        )


@dataclass(frozen=True)
class ClientResult:
    """A finished job: ``outcome`` and the update in ``flats``, or a ``failure``.

    ``flats`` (flat tensors by dtype group) stay valid until the engine calls
    :meth:`Backend.release` with this result.
    """

    job: ClientJob
    worker: int
    outcome: ClientOutcome | None = None
    flats: Mapping[str, torch.Tensor] | None = None
    failure: ClientFailure | None = None
    token: int = 0  # the backend's handle on the slot


class Backend(Protocol):
    """Runs client jobs on workers. Every method is called from the engine's thread.

    Constraints: results of one round come back in any order; a job is never lost (a
    worker that dies yields WORKER_LOST results for its unfinished jobs, or re-runs them);
    :meth:`next_result` never raises for a client's own failure (it becomes a
    ``failure``).
    """

    def start(self, plan: BackendPlan) -> None:
        """Start the workers (idempotent).

        Raises:
            SimulationError: a worker could not start (its error names why).
        """
        ...

    def broadcast(self, flats: Mapping[str, torch.Tensor]) -> None:
        """Make ``flats`` the global parameters for the jobs submitted next."""
        ...

    def submit(self, jobs: Sequence[ClientJob]) -> None:
        """Queue jobs, to be started in the order given."""
        ...

    def next_result(self, timeout: float | None = None) -> ClientResult:
        """The next finished job.

        Raises:
            TimeoutError: nothing finished within ``timeout`` seconds.
            SimulationError: no job is queued or running.
        """
        ...

    def release(self, result: ClientResult) -> None:
        """The engine is done with ``result.flats``; the slot may be reused."""
        ...

    def stop(self) -> None:
        """Interrupt running jobs promptly (safe from any thread); they end STOPPED."""
        ...

    def close(self) -> None:
        """Stop the workers and free their resources (idempotent)."""
        ...
