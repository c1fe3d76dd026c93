"""In-memory stores: the same contracts as the SQLite stores, gone when the process ends.

Used by simulations and tests. Values are kept as JSON text and array copies, so a record
read back is never shared with the caller, exactly as with the SQLite stores.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy.typing as npt

from fedloom.errors import NotFoundError, StoreError
from fedloom.store._base import (
    COMPLETED,
    EXPERIMENT_STATUSES,
    RUNNING,
    TASK_RUN_STATUSES,
    CheckpointRef,
    ClosingContext,
    ExperimentRecord,
    ExperimentStoreStatistics,
    FailedFile,
    PodStoreStatistics,
    RoundRecord,
    TaskRunRecord,
    last_complete_round,
)
from fedloom.store._checkpoints import copy_arrays, encode_arrays, prepare_arrays, sha256_hex
from fedloom.store._validation import (
    check_count,
    check_failed_files,
    check_id,
    check_metrics,
    check_model,
    check_per_pod_metrics,
    check_processed_files,
    check_round_index,
    check_same_origin,
    check_status,
    check_task_hash,
    check_task_run,
    check_text,
    from_json,
    to_json,
)

Clock = Callable[[], float]


@dataclass
class _Experiment:
    name: str
    task_json: str
    status: str
    created_at: float
    finished_at: float | None = None
    result_json: str | None = None
    rounds: dict[int, tuple[dict[str, float], dict[str, dict[str, float]], float]] = field(
        default_factory=dict
    )
    checkpoints: dict[int, tuple[CheckpointRef, dict[str, npt.NDArray[Any]]]] = field(
        default_factory=dict
    )


class _Closable(ClosingContext):
    _closed: bool

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"the {type(self).__name__} is closed")


class MemoryExperimentStore(_Closable):
    """An :class:`~fedloom.store.ExperimentStore` held in memory."""

    def __init__(self, *, clock: Clock = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._experiments: dict[str, _Experiment] = {}
        self._closed = False

    def create_experiment(self, name: str, task: Mapping[str, Any]) -> str:
        check_text(name, "experiment name", allow_empty=True)
        task_json = to_json(task, "task")
        with self._lock:
            self._check_open()
            experiment_id = uuid.uuid4().hex
            self._experiments[experiment_id] = _Experiment(
                name=name, task_json=task_json, status=RUNNING, created_at=float(self._clock())
            )
            return experiment_id

    def record_round(
        self,
        experiment_id: str,
        round_index: int,
        aggregated: Mapping[str, float],
        per_pod: Mapping[str, Mapping[str, float]],
    ) -> None:
        index = check_round_index(round_index)
        metrics = check_metrics(aggregated, "aggregated")
        pods = check_per_pod_metrics(per_pod)
        with self._lock:
            experiment = self._running(experiment_id, f"record round {index}")
            if index in experiment.rounds:
                raise StoreError(
                    f"round {index} of experiment {experiment_id} is already recorded; "
                    "a round is recorded once"
                )
            experiment.rounds[index] = (metrics, pods, float(self._clock()))

    def save_checkpoint(
        self, experiment_id: str, round_index: int, arrays: Mapping[str, npt.NDArray[Any]]
    ) -> CheckpointRef:
        index = check_round_index(round_index)
        prepared = prepare_arrays(arrays)
        digest = sha256_hex(encode_arrays(prepared))
        with self._lock:
            experiment = self._running(experiment_id, f"save a checkpoint of round {index}")
            if index in experiment.checkpoints:
                raise StoreError(
                    f"round {index} of experiment {experiment_id} already has a checkpoint"
                )
            ref = CheckpointRef(
                experiment_id=experiment_id,
                round_index=index,
                path=f"memory:{experiment_id}/round-{index:05d}",
                sha256=digest,
                created_at=float(self._clock()),
            )
            experiment.checkpoints[index] = (ref, prepared)
            return ref

    def load_checkpoint(
        self, experiment_id: str, round_index: int | None = None
    ) -> dict[str, npt.NDArray[Any]]:
        index = None if round_index is None else check_round_index(round_index)
        with self._lock:
            experiment = self._find(experiment_id)
            if not experiment.checkpoints:
                raise NotFoundError(f"experiment {experiment_id} has no checkpoint")
            if index is None:
                index = max(experiment.checkpoints)
            if index not in experiment.checkpoints:
                raise NotFoundError(
                    f"experiment {experiment_id} has no checkpoint of round {index}"
                )
            return copy_arrays(experiment.checkpoints[index][1])

    def finish_experiment(self, experiment_id: str, status: str, result: Mapping[str, Any]) -> None:
        check_status(status, EXPERIMENT_STATUSES[1:], "finished experiment status")
        result_json = to_json(result, "result")
        with self._lock:
            experiment = self._running(experiment_id, "finish it")
            experiment.status = status
            experiment.result_json = result_json
            experiment.finished_at = float(self._clock())

    def delete_checkpoints(self, experiment_id: str, round_indices: Iterable[int]) -> None:
        indices = {check_round_index(index) for index in round_indices}
        with self._lock:
            experiment = self._find(experiment_id)
            for index in indices:
                experiment.checkpoints.pop(index, None)

    def reopen_experiment(self, experiment_id: str) -> ExperimentRecord:
        with self._lock:
            experiment = self._find(experiment_id)
            if experiment.status == COMPLETED:
                raise StoreError(
                    f"experiment {experiment_id} is {COMPLETED}: there is nothing to resume; "
                    "start a new experiment instead"
                )
            last = last_complete_round(experiment.rounds, experiment.checkpoints)
            keep = -1 if last is None else last
            experiment.rounds = {i: v for i, v in experiment.rounds.items() if i <= keep}
            experiment.checkpoints = {i: v for i, v in experiment.checkpoints.items() if i <= keep}
            experiment.status = RUNNING
            experiment.finished_at = None
            experiment.result_json = None
            return self._record(experiment_id, experiment)

    def get_experiment(self, experiment_id: str) -> ExperimentRecord:
        with self._lock:
            experiment = self._find(experiment_id)
            return self._record(experiment_id, experiment)

    def list_experiments(self) -> list[ExperimentRecord]:
        with self._lock:
            self._check_open()
            return [self._record(key, value) for key, value in self._experiments.items()]

    def statistics(self) -> ExperimentStoreStatistics:
        """Counts of experiments (all and running), rounds and checkpoints."""
        with self._lock:
            self._check_open()
            values = self._experiments.values()
            return ExperimentStoreStatistics(
                experiments=len(self._experiments),
                running=sum(1 for e in values if e.status == RUNNING),
                rounds=sum(len(e.rounds) for e in values),
                checkpoints=sum(len(e.checkpoints) for e in values),
            )

    def close(self) -> None:
        """Release the store; closing twice is allowed, any other call afterwards is not."""
        with self._lock:
            self._closed = True
            self._experiments.clear()

    def _find(self, experiment_id: str) -> _Experiment:
        self._check_open()
        experiment = self._experiments.get(check_id(experiment_id, "experiment"))
        if experiment is None:
            raise NotFoundError(f"no experiment with id {experiment_id!r}")
        return experiment

    def _running(self, experiment_id: str, action: str) -> _Experiment:
        experiment = self._find(experiment_id)
        if experiment.status != RUNNING:
            raise StoreError(
                f"experiment {experiment_id} is already {experiment.status}; cannot {action}"
            )
        return experiment

    @staticmethod
    def _record(experiment_id: str, experiment: _Experiment) -> ExperimentRecord:
        return ExperimentRecord(
            experiment_id=experiment_id,
            name=experiment.name,
            task=from_json(experiment.task_json),
            status=experiment.status,
            created_at=experiment.created_at,
            finished_at=experiment.finished_at,
            result=from_json(experiment.result_json),
            rounds=[
                RoundRecord(
                    round_index=index,
                    aggregated=dict(metrics),
                    per_pod={pod: dict(values) for pod, values in pods.items()},
                    recorded_at=recorded_at,
                )
                for index, (metrics, pods, recorded_at) in sorted(experiment.rounds.items())
            ],
            checkpoints=[ref for _, (ref, _) in sorted(experiment.checkpoints.items())],
        )


class MemoryPodStore(_Closable):
    """A :class:`~fedloom.store.PodStore` held in memory."""

    def __init__(self, *, clock: Clock = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._runs: dict[str, tuple[TaskRunRecord, str | None]] = {}
        self._processed: dict[str, dict[str, int]] = {}
        self._failed: dict[str, dict[str, FailedFile]] = {}
        self._usage: dict[str, int] = {}
        self._closed = False

    def record_task_run(  # noqa: PLR0917 -- the contract's positional signature
        self,
        task_id: str,
        modeller: str,
        protocol: str,
        status: str,
        reason: str | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> None:
        result_json = check_task_run(
            task_id, modeller, protocol, status, reason=reason, result=result
        )
        with self._lock:
            self._check_open()
            now = float(self._clock())
            previous = self._runs.get(task_id)
            if previous is not None:
                recorded = (previous[0].modeller, previous[0].protocol)
                check_same_origin(task_id, recorded, (modeller, protocol))
            record = TaskRunRecord(
                task_id=task_id,
                modeller=modeller,
                protocol=protocol,
                status=status,
                reason=reason,
                result=None,
                started_at=now if previous is None else previous[0].started_at,
                finished_at=None if status == TASK_RUN_STATUSES[0] else now,
            )
            self._runs[task_id] = (record, result_json)

    def get_task_run(self, task_id: str) -> TaskRunRecord:
        with self._lock:
            self._check_open()
            entry = self._runs.get(check_id(task_id, "task run"))
            if entry is None:
                raise NotFoundError(f"no task run with task id {task_id!r}")
            return _with_result(*entry)

    def task_runs(self) -> list[TaskRunRecord]:
        with self._lock:
            self._check_open()
            runs = [_with_result(*entry) for entry in self._runs.values()]
        return sorted(runs, key=lambda run: run.started_at)  # stable: ties keep insertion order

    def record_processed_files(self, task_hash: str, files: Sequence[tuple[str, int]]) -> None:
        checked = check_processed_files(task_hash, files)
        with self._lock:
            self._check_open()
            processed = self._processed.setdefault(task_hash, {})
            failed = self._failed.get(task_hash, {})
            for name, mtime_ns in checked:
                processed[name] = mtime_ns
                failed.pop(name, None)

    def processed_files(self, task_hash: str) -> dict[str, int]:
        check_task_hash(task_hash)
        with self._lock:
            self._check_open()
            return dict(self._processed.get(task_hash, {}))

    def record_failed_files(self, task_hash: str, failures: Sequence[FailedFile]) -> None:
        checked = check_failed_files(task_hash, failures)
        with self._lock:
            self._check_open()
            failed = self._failed.setdefault(task_hash, {})
            for failure in checked:
                failed[failure.name] = failure

    def failed_files(self, task_hash: str) -> list[FailedFile]:
        check_task_hash(task_hash)
        with self._lock:
            self._check_open()
            failed = self._failed.get(task_hash, {})
            return [failed[name] for name in sorted(failed)]

    def add_usage(self, model: str, count: int) -> int:
        check_model(model)
        added = check_count(count, "count")
        with self._lock:
            self._check_open()
            total = self._usage.get(model, 0) + added
            check_count(total, f"the usage of model {model!r}")
            self._usage[model] = total
            return total

    def usage(self, model: str) -> int:
        check_model(model)
        with self._lock:
            self._check_open()
            return self._usage.get(model, 0)

    def statistics(self) -> PodStoreStatistics:
        """Counts of task runs, in total and per status."""
        with self._lock:
            self._check_open()
            statuses = [record.status for record, _ in self._runs.values()]
        return PodStoreStatistics(
            task_runs=len(statuses),
            accepted=statuses.count("accepted"),
            rejected=statuses.count("rejected"),
            completed=statuses.count("completed"),
            aborted=statuses.count("aborted"),
        )

    def close(self) -> None:
        """Release the store; closing twice is allowed, any other call afterwards is not."""
        with self._lock:
            self._closed = True
            self._runs.clear()
            self._processed.clear()
            self._failed.clear()
            self._usage.clear()


def _with_result(record: TaskRunRecord, result_json: str | None) -> TaskRunRecord:
    return TaskRunRecord(
        task_id=record.task_id,
        modeller=record.modeller,
        protocol=record.protocol,
        status=record.status,
        reason=record.reason,
        result=from_json(result_json),
        started_at=record.started_at,
        finished_at=record.finished_at,
    )
