"""The pod's SQLite store: task runs, processed and failed files, inference usage per model.

Every write runs in one ``BEGIN IMMEDIATE`` transaction, so a crash or a failed check
leaves the file as it was (see :class:`fedloom.store._schema.Database`). Values travel only
as SQL parameters; the only text ever joined into SQL is constants of this module.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fedloom.errors import NotFoundError
from fedloom.store._base import (
    TASK_RUN_STATUSES,
    ClosingContext,
    FailedFile,
    PodStoreStatistics,
    TaskRunRecord,
)
from fedloom.store._schema import Database
from fedloom.store._validation import (
    check_count,
    check_failed_files,
    check_id,
    check_model,
    check_processed_files,
    check_same_origin,
    check_task_hash,
    check_task_run,
    from_json,
)

Clock = Callable[[], float]
_TASK_RUN_COLUMNS = (
    "task_id, modeller, protocol, status, reason, result_json, started_at, finished_at"
)


class SqlitePodStore(ClosingContext):
    """A :class:`~fedloom.store.PodStore` in one SQLite file."""

    def __init__(self, path: str | os.PathLike[str], *, clock: Clock = time.time) -> None:
        self._db = Database(path)
        self._clock = clock

    @property
    def path(self) -> Path:
        """The database file."""
        return self._db.path

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
        with self._db.transaction(f"record task run {task_id!r}", write=True) as conn:
            recorded = conn.execute(
                "SELECT modeller, protocol FROM task_runs WHERE task_id = ?", (task_id,)
            ).fetchone()
            if recorded is not None:
                check_same_origin(task_id, (recorded[0], recorded[1]), (modeller, protocol))
            now = float(self._clock())
            finished_at = None if status == TASK_RUN_STATUSES[0] else now
            conn.execute(
                f"INSERT INTO task_runs ({_TASK_RUN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (task_id) DO UPDATE SET status = excluded.status,"
                " reason = excluded.reason, result_json = excluded.result_json,"
                " finished_at = excluded.finished_at",
                (task_id, modeller, protocol, status, reason, result_json, now, finished_at),
            )

    def get_task_run(self, task_id: str) -> TaskRunRecord:
        with self._db.transaction("read a task run", write=False) as conn:
            row = conn.execute(
                f"SELECT {_TASK_RUN_COLUMNS} FROM task_runs WHERE task_id = ?",
                (check_id(task_id, "task run"),),
            ).fetchone()
        if row is None:
            raise NotFoundError(f"no task run with task id {task_id!r}")
        return _task_run(row)

    def task_runs(self) -> list[TaskRunRecord]:
        with self._db.transaction("list task runs", write=False) as conn:
            rows = conn.execute(
                f"SELECT {_TASK_RUN_COLUMNS} FROM task_runs ORDER BY started_at, rowid"
            ).fetchall()
        return [_task_run(row) for row in rows]

    def record_processed_files(self, task_hash: str, files: Sequence[tuple[str, int]]) -> None:
        checked = check_processed_files(task_hash, files)
        now = float(self._clock())
        with self._db.transaction("record processed files", write=True) as conn:
            conn.executemany(
                "INSERT INTO processed_files (task_hash, name, mtime_ns, processed_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (task_hash, name) DO UPDATE SET"
                " mtime_ns = excluded.mtime_ns, processed_at = excluded.processed_at",
                [(task_hash, name, mtime_ns, now) for name, mtime_ns in checked],
            )
            conn.executemany(
                "DELETE FROM failed_files WHERE task_hash = ? AND name = ?",
                [(task_hash, name) for name, _ in checked],
            )

    def processed_files(self, task_hash: str) -> dict[str, int]:
        check_task_hash(task_hash)
        with self._db.transaction("read processed files", write=False) as conn:
            rows = conn.execute(
                "SELECT name, mtime_ns FROM processed_files WHERE task_hash = ?", (task_hash,)
            ).fetchall()
        return {name: int(mtime_ns) for name, mtime_ns in rows}

    def record_failed_files(self, task_hash: str, failures: Sequence[FailedFile]) -> None:
        checked = check_failed_files(task_hash, failures)
        with self._db.transaction("record failed files", write=True) as conn:
            conn.executemany(
                "INSERT INTO failed_files (task_hash, name, reason, exception_type, level,"
                " recorded_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (task_hash, name)"
                " DO UPDATE SET reason = excluded.reason,"
                " exception_type = excluded.exception_type, level = excluded.level,"
                " recorded_at = excluded.recorded_at",
                [
                    (task_hash, f.name, f.reason, f.exception_type, f.level, f.recorded_at)
                    for f in checked
                ],
            )

    def failed_files(self, task_hash: str) -> list[FailedFile]:
        check_task_hash(task_hash)
        with self._db.transaction("read failed files", write=False) as conn:
            rows = conn.execute(
                "SELECT name, reason, exception_type, level, recorded_at FROM failed_files"
                " WHERE task_hash = ? ORDER BY name",
                (task_hash,),
            ).fetchall()
        return [FailedFile(*row) for row in rows]

    def add_usage(self, model: str, count: int) -> int:
        check_model(model)
        added = check_count(count, "count")
        with self._db.transaction(f"add usage of model {model!r}", write=True) as conn:
            row = conn.execute("SELECT used FROM model_usage WHERE model = ?", (model,)).fetchone()
            # Checked here, not by SQLite: an INTEGER sum that overflows silently turns REAL.
            total = check_count(
                (0 if row is None else int(row[0])) + added, f"the usage of model {model!r}"
            )
            conn.execute(
                "INSERT INTO model_usage (model, used) VALUES (?, ?)"
                " ON CONFLICT (model) DO UPDATE SET used = excluded.used",
                (model, total),
            )
        return total

    def usage(self, model: str) -> int:
        check_model(model)
        with self._db.transaction(f"read usage of model {model!r}", write=False) as conn:
            row = conn.execute("SELECT used FROM model_usage WHERE model = ?", (model,)).fetchone()
        return 0 if row is None else int(row[0])

    def statistics(self) -> PodStoreStatistics:
        """Counts of task runs, in total and per status."""
        with self._db.transaction("count task runs", write=False) as conn:
            counts = dict(conn.execute("SELECT status, count(*) FROM task_runs GROUP BY status"))
        return PodStoreStatistics(
            task_runs=sum(counts.values()),
            accepted=counts.get("accepted", 0),
            rejected=counts.get("rejected", 0),
            completed=counts.get("completed", 0),
            aborted=counts.get("aborted", 0),
        )

    def close(self) -> None:
        """Release the store; closing twice is allowed, any other call afterwards is not."""
        self._db.close()


def _task_run(row: tuple[Any, ...]) -> TaskRunRecord:
    task_id, modeller, protocol, status, reason, result_json, started_at, finished_at = row
    return TaskRunRecord(
        task_id, modeller, protocol, status, reason, from_json(result_json), started_at, finished_at
    )
