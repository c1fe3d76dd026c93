"""Store contracts, the records they return, and the checks every implementation shares.

Two small contracts live here: :class:`ExperimentStore` (modeller side: experiments, rounds,
metrics, checkpoints) and :class:`PodStore` (pod side: task runs, processed and failed files,
per-model usage). Each has an in-memory and
an SQLite implementation, and :mod:`fedloom.testing._store_conformance` runs the same checks
on all of them. Records are frozen dataclasses; every record a store returns is a fresh copy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, Self, runtime_checkable

import numpy.typing as npt

from fedloom.errors import ConfigError
from fedloom.store._jsonable import canonical_json

#: Status of an experiment that is still going.
RUNNING = "running"
#: Status of an experiment that finished well: it cannot be reopened.
COMPLETED = "completed"
#: Every status an experiment can have; ``finish_experiment`` takes the last two.
EXPERIMENT_STATUSES: tuple[str, ...] = (RUNNING, COMPLETED, "failed")
#: Every status a pod's task run can have; all but ``"accepted"`` are final.
TASK_RUN_STATUSES: tuple[str, ...] = ("accepted", "rejected", "completed", "aborted")
#: The largest round index a store accepts (SQLite's INTEGER range).
MAX_ROUND_INDEX = 2**63 - 1
#: Where a file failed: alone (``"file"``) or as part of a batch that failed as a whole.
FAILED_FILE_LEVELS: tuple[str, ...] = ("file", "batch")
#: The longest file name (in characters) a pod store records.
MAX_FILE_NAME_LENGTH = 4096


def last_complete_round(
    round_indices: Iterable[int], checkpoint_indices: Iterable[int]
) -> int | None:
    """The highest round index that has both its metrics and its checkpoint (None: none has).

    A modeller records a round's metrics and then saves its checkpoint, two writes; a
    crash between them leaves one without the other. An experiment resumes after this
    round (see :meth:`ExperimentStore.reopen_experiment`).
    """
    complete = set(round_indices) & set(checkpoint_indices)
    return max(complete) if complete else None


def task_hash(task: Mapping[str, Any], datasource: Mapping[str, Any]) -> str:
    """The key under which a pod remembers processed and failed files of one kind of task.

    SHA-256 (lowercase hex) of the canonical JSON (sorted keys, no spaces, UTF-8, no NaN) of
    ``{"task": task, "datasource": datasource}``: the same definition run on the same data
    gives the same hash, whatever the key order.

    Raises:
        ConfigError: ``task`` or ``datasource`` is not a mapping or holds something JSON
            cannot hold (a set, bytes, NaN, a non-str key); the message names the key.
    """
    for what, value in (("task", task), ("datasource", datasource)):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{what} must be a mapping, got {type(value).__name__}")
    text = canonical_json({"task": task, "datasource": datasource}, "task definition")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class RoundRecord:
    """The metrics of one finished round: the aggregate and each pod's own."""

    round_index: int
    aggregated: dict[str, float]
    per_pod: dict[str, dict[str, float]]
    recorded_at: float


@dataclass(frozen=True)
class CheckpointRef:
    """Where one round's model arrays were saved, and the SHA-256 of what was saved."""

    experiment_id: str
    round_index: int
    path: str
    sha256: str
    created_at: float


@dataclass(frozen=True)
class ExperimentRecord:
    """One experiment with its rounds and checkpoints, both ordered by round index."""

    experiment_id: str
    name: str
    task: dict[str, Any]
    status: str
    created_at: float
    finished_at: float | None
    result: dict[str, Any] | None
    rounds: list[RoundRecord]
    checkpoints: list[CheckpointRef]

    @property
    def last_complete_round(self) -> int | None:
        """The highest round with both its metrics and its checkpoint (None: no such round)."""
        return last_complete_round(
            (r.round_index for r in self.rounds), (c.round_index for c in self.checkpoints)
        )


@dataclass(frozen=True)
class TaskRunRecord:
    """One task as a pod saw it: who asked, what was decided, and how it ended."""

    task_id: str
    modeller: str
    protocol: str
    status: str
    reason: str | None
    result: dict[str, Any] | None
    started_at: float
    finished_at: float | None


@dataclass(frozen=True)
class FailedFile:
    """One file that failed in a task, and why; ``level`` is one of FAILED_FILE_LEVELS."""

    name: str
    reason: str
    exception_type: str
    level: str
    recorded_at: float


@dataclass(frozen=True)
class ExperimentStoreStatistics:
    """Counts of what an experiment store holds."""

    experiments: int
    running: int
    rounds: int
    checkpoints: int


@dataclass(frozen=True)
class PodStoreStatistics:
    """Counts of the task runs a pod store holds, in total and per status."""

    task_runs: int
    accepted: int
    rejected: int
    completed: int
    aborted: int


@runtime_checkable
class ExperimentStore(Protocol):
    """The modeller's record of experiments, so that an experiment can resume after a crash.

    Resuming: :meth:`reopen_experiment` trims the half-written round a crash left and sets
    the experiment running again; :func:`fedloom.protocols.resume_experiment` builds on it.

    Safe to call from several threads. Every method of a closed store raises StoreError.
    """

    def create_experiment(self, name: str, task: Mapping[str, Any]) -> str:
        """Start a new experiment (status ``"running"``) and return its id (uuid4 hex).

        Raises:
            ConfigError: ``name`` is not a str, or ``task`` is not JSON-able (the message
                names the key); nothing is written.
            StoreError: the store is closed or could not write.
        """
        ...

    def record_round(
        self,
        experiment_id: str,
        round_index: int,
        aggregated: Mapping[str, float],
        per_pod: Mapping[str, Mapping[str, float]],
    ) -> None:
        """Record the metrics of one round; a round is recorded once and never overwritten.

        Raises:
            ConfigError: ``round_index`` is not an int >= 0, or a metric is not a finite
                real number (bool, NaN and infinity are refused); nothing is written.
            NotFoundError: no experiment has this id.
            StoreError: this round is already recorded, the experiment is finished, or the
                store is closed or could not write.
        """
        ...

    def save_checkpoint(
        self, experiment_id: str, round_index: int, arrays: Mapping[str, npt.NDArray[Any]]
    ) -> CheckpointRef:
        """Save named arrays as the checkpoint of one round (once per round).

        Raises:
            ConfigError: an array name is not a str, a value is not a numpy array, a dtype
                is not one safetensors stores, or ``round_index`` is invalid; nothing is written.
            NotFoundError: no experiment has this id.
            StoreError: this round already has a checkpoint, the experiment is finished, or
                the store is closed or could not write.
        """
        ...

    def load_checkpoint(
        self, experiment_id: str, round_index: int | None = None
    ) -> dict[str, npt.NDArray[Any]]:
        """Load the arrays of one round's checkpoint (``None``: the highest round saved).

        Raises:
            ConfigError: ``round_index`` is neither None nor a valid round index.
            NotFoundError: no experiment has this id, or it has no such checkpoint.
            StoreError: the checkpoint file is missing, was modified or is corrupted, or
                the store is closed.
        """
        ...

    def delete_checkpoints(self, experiment_id: str, round_indices: Iterable[int]) -> None:
        """Remove the checkpoints of these rounds (a round without one is skipped).

        For a checkpoint retention policy (e.g. keep the last and the best): the rounds'
        metrics stay. Removing the last complete round's checkpoint makes an earlier round
        the resume point. The records go in one transaction; their files are deleted after
        the commit (a crash in between leaves files no record points to, which a later
        save of the same round replaces).

        Raises:
            ConfigError: a round index is invalid; nothing is removed.
            NotFoundError: no experiment has this id.
            StoreError: the store is closed or could not write.
        """
        ...

    def finish_experiment(self, experiment_id: str, status: str, result: Mapping[str, Any]) -> None:
        """Mark a running experiment ``"completed"`` or ``"failed"`` and keep its result.

        Raises:
            ConfigError: ``status`` is not ``"completed"`` or ``"failed"``, or ``result``
                is not JSON-able (the message names the key); nothing is written.
            NotFoundError: no experiment has this id.
            StoreError: the experiment is already finished, or the store is closed or
                could not write.
        """
        ...

    def reopen_experiment(self, experiment_id: str) -> ExperimentRecord:
        """Make a crashed (``"running"``) or ``"failed"`` experiment resumable; return it.

        Keeps the rounds up to the last one that has both its metrics and its checkpoint
        (:func:`last_complete_round`) and removes every round record and checkpoint after
        it (all of them when no round is complete): a crash between a round's
        :meth:`record_round` and its :meth:`save_checkpoint` leaves half a round, and the
        resumed experiment records and checkpoints that round again. The status goes back
        to ``"running"``, ``finished_at`` and ``result`` to None. All of it is one
        transaction: a crash leaves the experiment as it was or fully reopened. Files of
        removed checkpoints are deleted only after the commit (a crash in between leaves
        files no record points to, which a later save of the same round replaces).
        Reopening an experiment that is already running and whole changes nothing, so a
        crashed resume can simply be reopened again.

        Returns:
            A copy of the reopened experiment, as :meth:`get_experiment` would return it;
            it resumes at round ``record.last_complete_round + 1`` (0 when that is None).

        Raises:
            NotFoundError: no experiment has this id; nothing is written.
            StoreError: the experiment is ``"completed"`` (there is nothing to resume; a
                new experiment must be started), or the store is closed or could not
                write; nothing is written.
        """
        ...

    def get_experiment(self, experiment_id: str) -> ExperimentRecord:
        """Return a copy of one experiment with all its rounds and checkpoints.

        Raises:
            NotFoundError: no experiment has this id.
            StoreError: the store is closed or could not read.
        """
        ...

    def list_experiments(self) -> list[ExperimentRecord]:
        """Return copies of every experiment, in the order they were created.

        Raises:
            StoreError: the store is closed or could not read.
        """
        ...

    def close(self) -> None:
        """Release the store; closing twice is allowed, any other call afterwards is not."""
        ...


@runtime_checkable
class PodStore(Protocol):
    """The pod's record of the tasks it ran, the files they read, and per-model usage.

    Processed and failed files are kept per task hash (see :func:`task_hash`), so a task
    that runs again on the same data can skip what it already processed. Safe to call from
    several threads. Every method of a closed store raises StoreError.
    """

    def record_task_run(  # noqa: PLR0917 -- the contract's positional signature
        self,
        task_id: str,
        modeller: str,
        protocol: str,
        status: str,
        reason: str | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> None:
        """Insert the run of ``task_id``, or update it with the given status/reason/result.

        ``started_at`` is set by the first call and kept; ``finished_at`` is set when the
        status is final (anything but ``"accepted"``) and cleared otherwise.

        Raises:
            ConfigError: an id is empty or not a str, ``status`` is not one of
                :data:`TASK_RUN_STATUSES`, ``reason`` is not a str, or ``result`` is not
                JSON-able (the message names the key); nothing is written.
            StoreError: ``task_id`` was recorded for another modeller or protocol, or the
                store is closed or could not write.
        """
        ...

    def get_task_run(self, task_id: str) -> TaskRunRecord:
        """Return a copy of the run of ``task_id``.

        Raises:
            NotFoundError: no run has this task id.
            StoreError: the store is closed or could not read.
        """
        ...

    def task_runs(self) -> list[TaskRunRecord]:
        """Return copies of every run, ordered by ``started_at`` (ties: first recorded first).

        Raises:
            StoreError: the store is closed or could not read.
        """
        ...

    def record_processed_files(self, task_hash: str, files: Sequence[tuple[str, int]]) -> None:
        """Record ``(name, mtime_ns)`` pairs as processed by tasks of ``task_hash``.

        All pairs are written in one transaction, or none. A file recorded again gets the
        new mtime (the last pair wins within one call), and recording a file clears its
        failed entry for the same task hash.

        Raises:
            ConfigError: ``task_hash`` is not 64 lowercase hex characters, ``files`` is not a
                sequence of pairs, a name is not a non-empty str of at most
                :data:`MAX_FILE_NAME_LENGTH` characters, or an mtime is not an int >= 0;
                nothing is written.
            StoreError: the store is closed or could not write.
        """
        ...

    def processed_files(self, task_hash: str) -> dict[str, int]:
        """Return ``{name: mtime_ns}`` of every file processed under ``task_hash``.

        Raises:
            ConfigError: ``task_hash`` is not 64 lowercase hex characters.
            StoreError: the store is closed or could not read.
        """
        ...

    def record_failed_files(self, task_hash: str, failures: Sequence[FailedFile]) -> None:
        """Record failed files of ``task_hash``, replacing an earlier failure of the same name.

        All failures are written in one transaction, or none.

        Raises:
            ConfigError: ``task_hash`` is invalid, an entry is not a :class:`FailedFile`, a
                name is invalid, ``reason`` or ``exception_type`` is not a str, ``level`` is
                not one of :data:`FAILED_FILE_LEVELS`, or ``recorded_at`` is not a finite
                number; nothing is written.
            StoreError: the store is closed or could not write.
        """
        ...

    def failed_files(self, task_hash: str) -> list[FailedFile]:
        """Return the failed files of ``task_hash``, sorted by name.

        Raises:
            ConfigError: ``task_hash`` is not 64 lowercase hex characters.
            StoreError: the store is closed or could not read.
        """
        ...

    def add_usage(self, model: str, count: int) -> int:
        """Atomically add ``count`` predictions to the usage of ``model``; return the new total.

        Raises:
            ConfigError: ``model`` is not a non-empty str, ``count`` is not an int >= 0, or
                the total would pass 2**63 - 1; nothing is written.
            StoreError: the store is closed or could not write.
        """
        ...

    def usage(self, model: str) -> int:
        """Return the predictions recorded for ``model`` (0 if it was never used).

        Raises:
            ConfigError: ``model`` is not a non-empty str.
            StoreError: the store is closed or could not read.
        """
        ...

    def close(self) -> None:
        """Release the store; closing twice is allowed, any other call afterwards is not."""
        ...


class ClosingContext:
    """Mixin: ``with store:`` closes the store on the way out."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
