"""What a worker may read and write in its pod's records.

Those are processed files, failed files and usage per model.

The worker side of a task never holds the pod's store: in the pod's own process it gets a
:class:`StoreLedger` over it; in a task's child process it gets a ledger whose calls go over
the link to the pod, which runs them on its :class:`StoreLedger`. Usage limits are the
pod's: :meth:`Ledger.consume` cuts the new results to what the model may still release.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from fedloom.algorithms.inference import UsageCut, apply_usage_limit
from fedloom.errors import ConfigError
from fedloom.store import FailedFile, MemoryPodStore, PodStore


@runtime_checkable
class Ledger(Protocol):
    """A task's view of its pod's records (async: it may be a request to the pod)."""

    async def processed_files(self, task_hash: str) -> dict[str, int]:
        """Name → modification time (ns) of the files this task definition processed."""
        ...

    async def failed_files(self, task_hash: str) -> list[FailedFile]:
        """The files this task definition failed on, by name."""
        ...

    async def record_processed(self, task_hash: str, files: Sequence[tuple[str, int]]) -> None:
        """Record processed files (this clears their failures)."""
        ...

    async def record_failed(self, task_hash: str, failures: Sequence[FailedFile]) -> None:
        """Record failed files with their reason and level ("file" or "batch")."""
        ...

    async def consume(self, model: str, new: int) -> UsageCut:
        """Add up to ``new`` predictions to ``model``'s usage, within the pod's limit."""
        ...

    async def approved_models(self) -> frozenset[str] | None:
        """SHA-256 hashes of the model files the pod approved (None: any weights go)."""
        ...


class StoreLedger:
    """A :class:`Ledger` over a pod store (a memory store when the pod keeps none)."""

    def __init__(
        self,
        store: PodStore | None,
        limits: Mapping[str, int] | None = None,
        approved_models: Collection[str] | None = None,
    ) -> None:
        self.store: PodStore = store if store is not None else MemoryPodStore()
        self.limits = dict(limits or {})
        self.approved = None if approved_models is None else frozenset(approved_models)

    async def approved_models(self) -> frozenset[str] | None:
        return self.approved

    async def processed_files(self, task_hash: str) -> dict[str, int]:
        return self.store.processed_files(task_hash)

    async def failed_files(self, task_hash: str) -> list[FailedFile]:
        return self.store.failed_files(task_hash)

    async def record_processed(self, task_hash: str, files: Sequence[tuple[str, int]]) -> None:
        self.store.record_processed_files(task_hash, list(files))

    async def record_failed(self, task_hash: str, failures: Sequence[FailedFile]) -> None:
        self.store.record_failed_files(task_hash, list(failures))

    async def consume(self, model: str, new: int) -> UsageCut:
        # no await between reading and adding: one event loop makes this atomic per pod
        cut = apply_usage_limit(self.store.usage(model), new, self.limits.get(model))
        if cut.allowed:
            self.store.add_usage(model, cut.allowed)
        return cut

    async def call(self, method: str, args: Sequence[Any]) -> Any:
        """Run one request from a task's child; returns a msgpack-able answer.

        Raises:
            ConfigError: an unknown method or malformed arguments.
        """
        if method == "processed_files":
            return await self.processed_files(*args)
        if method == "failed_files":
            return [failed_to_body(f) for f in await self.failed_files(*args)]
        if method == "record_processed":
            task, files = args
            return await self.record_processed(task, [(str(n), int(t)) for n, t in files])
        if method == "record_failed":
            task, failures = args
            return await self.record_failed(task, [failed_from_body(f) for f in failures])
        if method == "approved_models":
            return None if self.approved is None else sorted(self.approved)
        if method == "consume":
            cut = await self.consume(*args)
            return [cut.allowed, cut.overrun, cut.exceeded]
        raise ConfigError(f"unknown ledger call {method!r}")


def failed_to_body(failed: FailedFile) -> list[Any]:
    return [failed.name, failed.reason, failed.exception_type, failed.level, failed.recorded_at]


def failed_from_body(body: object) -> FailedFile:
    """Raises ConfigError: ``body`` is not a failed-file row."""
    if not isinstance(body, list | tuple) or len(body) != 5:
        raise ConfigError("a failed-file row must have 5 fields")
    name, reason, exception_type, level, recorded_at = body
    return FailedFile(str(name), str(reason), str(exception_type), str(level), float(recorded_at))
