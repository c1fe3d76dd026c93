"""What happened to each task of a :class:`~fedloom.simulation._scheduler.Scheduler` run, by group.

:meth:`SchedulerReport.write` puts one JSON file per group in a folder, each written to a
temporary file first and renamed into place, so a reader never sees half a report.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedloom.scheduler import ResourceEstimate, TaskStatus

MAX_RESULT_REPR_CHARS = 200
"""A result that is not JSON goes into the report files as a repr cut to this length."""

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Interrupt:
    """One try that ran out of memory.

    Attributes:
        attempt: 1 for the first try.
        stage: ``"load"`` or ``"train"``.
        device: Where the try ran.
        estimate: The estimate that try was admitted with.
        error_type: Class name of the out-of-memory error.
        message: Its message.
    """

    attempt: int
    stage: str
    device: str | None
    estimate: ResourceEstimate
    error_type: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields."""
        return {
            "attempt": self.attempt,
            "stage": self.stage,
            "device": self.device,
            "estimate": self.estimate.to_dict(),
            "error_type": self.error_type,
            "message": self.message,
        }


@dataclass(frozen=True)
class TaskEntry:
    """The outcome of one task.

    Attributes:
        name: The task's name.
        group: The task's group.
        status: FINISHED, EXCEPTION or EXITED.
        device: The device of the last try (``None`` if it never got one).
        attempts: How many times the task was admitted.
        estimate: The estimate of the last try (raised after each interrupt).
        interrupts: The tries that ran out of memory, in order.
        seconds: Time spent admitted (loading, waiting for a device, training), all tries.
        result: What ``train()`` returned (FINISHED only).
        stage: Where it failed: ``"admission"``, ``"load"`` or ``"train"`` (else ``None``).
        error_type: Class name of the error that failed it.
        message: That error's message.
    """

    name: str
    group: str
    status: TaskStatus
    device: str | None
    attempts: int
    estimate: ResourceEstimate
    interrupts: tuple[Interrupt, ...] = ()
    seconds: float = 0.0
    result: object = None
    stage: str | None = None
    error_type: str | None = None
    message: str | None = None

    @property
    def retried(self) -> bool:
        """Whether the task ran out of memory and was admitted again."""
        return bool(self.interrupts) and self.attempts > 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields; a result that is not JSON becomes its type and a short repr."""
        return {
            "name": self.name,
            "group": self.group,
            "status": self.status.value,
            "device": self.device,
            "attempts": self.attempts,
            "estimate": self.estimate.to_dict(),
            "interrupts": [interrupt.to_dict() for interrupt in self.interrupts],
            "seconds": self.seconds,
            "result": _jsonable(self.result),
            "stage": self.stage,
            "error_type": self.error_type,
            "message": self.message,
        }


@dataclass(frozen=True)
class GroupSummary:
    """Task names of one group by outcome (a retried task is also in its final outcome).

    Attributes:
        group: The group's name.
        finished: FINISHED tasks.
        failed: EXCEPTION tasks.
        interrupted_and_retried: Tasks that ran out of memory and were admitted again.
        exited: Tasks a stop took off the queue.
    """

    group: str
    finished: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    interrupted_and_retried: tuple[str, ...] = ()
    exited: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Counts and names per outcome."""
        outcomes = {
            "finished": self.finished,
            "failed": self.failed,
            "interrupted_and_retried": self.interrupted_and_retried,
            "exited": self.exited,
        }
        return {
            "group": self.group,
            **{key: {"count": len(names), "tasks": list(names)} for key, names in outcomes.items()},
        }


@dataclass(frozen=True)
class SchedulerReport:
    """Every task's :class:`TaskEntry`, in submission order."""

    entries: tuple[TaskEntry, ...]

    def by_name(self, name: str) -> TaskEntry:
        """The entry of the (first) task called ``name``.

        Raises:
            KeyError: No task has that name.
        """
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(f"no task named {name!r} in this report")

    def groups(self) -> dict[str, GroupSummary]:
        """Group name → summary, groups in order of their first task."""
        members: dict[str, list[TaskEntry]] = {}
        for entry in self.entries:
            members.setdefault(entry.group, []).append(entry)
        return {group: _summarise(group, entries) for group, entries in members.items()}

    def to_dict(self) -> dict[str, Any]:
        """Per group: its summary and its tasks' entries."""
        return {
            group: {**summary.to_dict(), "entries": self._entries_of(group)}
            for group, summary in self.groups().items()
        }

    def _entries_of(self, group: str) -> list[dict[str, Any]]:
        return [entry.to_dict() for entry in self.entries if entry.group == group]

    def write(self, folder: Path) -> list[Path]:
        """Write ``<group>.json`` per group into ``folder`` (created if missing).

        Group names are made safe as file names (other characters become ``_``); two
        groups that end up with the same name get ``-2``, ``-3``, ... suffixes.

        Returns:
            The files written, in group order.

        Raises:
            OSError: The folder or a file could not be written (no partial file is left).
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths: list[Path] = []
        taken: set[str] = set()
        for group, body in self.to_dict().items():
            stem = _file_stem(group)
            candidate, n = stem, 1
            while candidate.lower() in taken:
                n += 1
                candidate = f"{stem}-{n}"
            taken.add(candidate.lower())
            path = folder / f"{candidate}.json"
            _write_atomically(path, json.dumps(body, indent=2, allow_nan=False) + "\n")
            paths.append(path)
        return paths

    def summary_text(self) -> str:
        """A few lines per group for people: counts, then the failed and retried tasks."""
        by_name = {(entry.group, entry.name): entry for entry in self.entries}
        lines: list[str] = []
        for group, summary in self.groups().items():
            lines.append(
                f"{group}: {len(summary.finished)} finished, {len(summary.failed)} failed, "
                f"{len(summary.interrupted_and_retried)} interrupted and retried, "
                f"{len(summary.exited)} exited"
            )
            for name in summary.failed:
                entry = by_name[(group, name)]
                lines.append(
                    f"  failed: {name} at {entry.stage}: {entry.error_type}: {entry.message}"
                )
            for name in summary.interrupted_and_retried:
                entry = by_name[(group, name)]
                lines.append(
                    f"  retried: {name} ({len(entry.interrupts)} out-of-memory, "
                    f"{entry.attempts} tries, {entry.status.value})"
                )
        return "\n".join(lines)


def _summarise(group: str, entries: Sequence[TaskEntry]) -> GroupSummary:
    def names(status: TaskStatus) -> tuple[str, ...]:
        return tuple(entry.name for entry in entries if entry.status is status)

    return GroupSummary(
        group=group,
        finished=names(TaskStatus.FINISHED),
        failed=names(TaskStatus.EXCEPTION),
        interrupted_and_retried=tuple(entry.name for entry in entries if entry.retried),
        exited=names(TaskStatus.EXITED),
    )


def _jsonable(value: object) -> object:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        item = getattr(value, "item", None)  # numpy and torch scalars
        if callable(item) and getattr(value, "ndim", None) == 0:
            try:
                scalar = item()
            except (TypeError, ValueError, RuntimeError):
                scalar = None
            if isinstance(scalar, int | bool | str) or (
                isinstance(scalar, float) and math.isfinite(scalar)
            ):
                return scalar
        return {"type": type(value).__name__, "repr": repr(value)[:MAX_RESULT_REPR_CHARS]}
    return value


def _file_stem(group: str) -> str:
    stem = _UNSAFE_NAME.sub("_", group).strip("._")[:100]
    return stem or "group"


def _write_atomically(path: Path, text: str) -> None:
    temporary: str | None = None
    try:
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
            delete=False,
        ) as handle:  # fmt: skip
            temporary = handle.name
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)
        raise
