"""Per-round reports of a simulation: each round is a task group of client jobs.

A report says, for each client of the round, how it ended (FINISHED, EXCEPTION with the
error, EXITED when the simulation stopped), on which worker, how many tries it took, and
every INTERRUPT (out of memory) with the estimate it had then.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedloom.algorithms.ml import flat_metrics
from fedloom.scheduler import ResourceEstimate, TaskStatus
from fedloom.simulation._backend import ClientFailure
from fedloom.simulation._client import ClientOutcome

__all__ = ["ClientRecord", "RoundReport"]


@dataclass
class ClientRecord:
    """How one client's job in one round went."""

    client: int
    status: TaskStatus = TaskStatus.AVAILABLE
    attempts: int = 0
    worker: int | None = None
    outcome: ClientOutcome | None = None
    failure: ClientFailure | None = None
    interrupts: list[dict[str, Any]] = field(default_factory=list)

    def finish(self, outcome: ClientOutcome, worker: int) -> None:
        self.status, self.outcome, self.worker = TaskStatus.FINISHED, outcome, worker

    def fail(self, failure: ClientFailure) -> None:
        self.status, self.failure = TaskStatus.EXCEPTION, failure

    def interrupt(self, estimate: ResourceEstimate, failure: ClientFailure) -> None:
        self.status = TaskStatus.INTERRUPT
        self.interrupts.append(
            {
                "estimate": estimate.to_dict(),
                "error_type": failure.error_type,
                "message": failure.message,
            }
        )

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "client": self.client,
            "status": self.status.value,
            "attempts": self.attempts,
            "worker": self.worker,
            "interrupts": list(self.interrupts),
        }
        if self.outcome is not None:
            entry |= {
                "num_samples": self.outcome.num_samples,
                "train": self.outcome.train,
                "validation": self.outcome.validation,
                "seconds": self.outcome.seconds,
            }
        if self.failure is not None:
            entry["failure"] = {
                "kind": self.failure.kind.value,
                "stage": "train",
                "error_type": self.failure.error_type,
                "message": self.failure.message,
            }
        return entry


@dataclass
class RoundReport:
    """One round: its clients' records, the aggregated metrics and the wall time."""

    round: int
    clients: list[ClientRecord]
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    stopped: bool = False

    @property
    def group(self) -> str:
        return f"round-{self.round}"

    def counts(self) -> dict[str, int]:
        """Finished, failed, interrupted-and-retried and exited clients."""
        return {
            "finished": sum(r.status is TaskStatus.FINISHED for r in self.clients),
            "failed": sum(r.status is TaskStatus.EXCEPTION for r in self.clients),
            "interrupted_and_retried": sum(bool(r.interrupts) for r in self.clients),
            "exited": sum(r.status is TaskStatus.EXITED for r in self.clients),
        }

    def client_metrics(self) -> dict[str, dict[str, float]]:
        """Each finished client's :func:`~fedloom.algorithms.ml.flat_metrics`, by client name."""
        return {
            f"client-{r.client}": flat_metrics(
                r.outcome.num_samples, r.outcome.train, r.outcome.validation
            )
            for r in self.clients
            if r.outcome is not None and r.status is TaskStatus.FINISHED
        }

    def failure_summary(self, limit: int = 5) -> str:
        failed = [r for r in self.clients if r.failure is not None]
        shown = "; ".join(
            f"client {r.client}: {r.failure.error_type}: {r.failure.message}"
            for r in failed[:limit]
            if r.failure is not None
        )
        more = len(failed) - limit
        return shown + (f" and {more} more" if more > 0 else "") if failed else "no failures"

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "round": self.round,
            "seconds": self.seconds,
            "metrics": dict(self.metrics),
            "summary": self.counts(),
            "clients": [record.to_dict() for record in self.clients],
        }

    def write(self, folder: Path) -> Path:
        """Write ``<folder>/round-<n>.json`` atomically; return its path."""
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self.group}.json"
        temporary = path.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(self.to_dict(), indent=2), encoding="utf-8")
        os.replace(temporary, path)
        return path
