"""The simulation Backend contract: who trains the virtual clients, and where.

The engine (:mod:`fedloom.simulation._engine`) owns rounds, sampling, scheduling and the
ordered fold; a backend only runs client jobs. Implementations: the process pool
(persistent spawned workers, shared memory), the thread pool (one process; for
free-threaded Python or I/O-bound clients) and Ray (past one machine).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from fedloom.errors import AbortReason, UpdateRejectedError, UpdateRejectionReason
from fedloom.simulation._client import ClientJob, ClientOutcome, RunnerPlan
from fedloom.simulation._shm import FlatLayout

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


class FailureKind:
    """The simulation's names for why a client job produced no update.

    They are members of the one abort-reason tree (:class:`~fedloom.errors.AbortReason`),
    the reasons a pod's task ends with too, not a vocabulary of their own.
    """

    OUT_OF_MEMORY = AbortReason.WORKER_OUT_OF_MEMORY  # re-queued with a raised estimate
    ERROR = AbortReason.WORKER_ERROR  # the client's own code or data failed
    NON_FINITE = AbortReason.UPDATE_REJECTED  # NaN or Inf: left out of the fold
    WORKER_LOST = AbortReason.WORKER_CRASHED  # the worker died; the job is re-run elsewhere
    STOPPED = AbortReason.CANCELLED_BY_MODELLER  # the stop event interrupted it


@dataclass(frozen=True)
class ClientFailure:
    """Why a job produced no update; travels between processes as :meth:`to_body`.

    ``rejection`` says why the fold refused the update, for ``UPDATE_REJECTED``.
    """

    kind: AbortReason
    error_type: str
    message: str
    rejection: UpdateRejectionReason | None = None

    @classmethod
    def of(cls, exc: BaseException) -> ClientFailure:
        """The failure an exception in a client's job means.

        Out of memory, a rejected update, or an error.
        """
        from fedloom.scheduler import is_out_of_memory

        message = f"{exc}"[:_MAX_MESSAGE] or type(exc).__name__
        if isinstance(exc, UpdateRejectedError):
            return cls(FailureKind.NON_FINITE, type(exc).__name__, message, exc.reason)
        kind = FailureKind.OUT_OF_MEMORY if is_out_of_memory(exc) else FailureKind.ERROR
        return cls(kind, type(exc).__name__, message)

    @classmethod
    def rejected(cls, error: UpdateRejectedError) -> ClientFailure:
        """The failure of an update the fold refused."""
        return cls.of(error)

    @classmethod
    def non_finite(cls) -> ClientFailure:
        """The failure of an update holding NaN or Inf (what every backend checks)."""
        return cls.of(
            UpdateRejectedError(UpdateRejectionReason.NON_FINITE, "the update holds NaN/Inf")
        )

    def to_body(self) -> dict[str, Any]:
        """``{"failure": {...}}``, to merge into a msgpack reply."""
        return {
            "failure": {
                "kind": self.kind.value,
                "error_type": self.error_type,
                "message": self.message,
            }
            | ({"rejection": self.rejection.value} if self.rejection else {})
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ClientFailure:
        """Read :meth:`to_body`'s ``failure`` entry (missing fields read as an error)."""
        rejection = body.get("rejection")
        return cls(
            AbortReason(body.get("kind", AbortReason.WORKER_ERROR.value)),
            str(body.get("error_type", "")),
            str(body.get("message", "")),
            None if rejection is None else UpdateRejectionReason(rejection),
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
