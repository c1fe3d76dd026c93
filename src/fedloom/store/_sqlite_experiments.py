"""The modeller's SQLite store: experiments, rounds, metrics and checkpoint files beside it.

Every write runs in one ``BEGIN IMMEDIATE`` transaction, so a crash or a failed check
leaves the file as it was (see :class:`fedloom.store._schema.Database`). Values travel only
as SQL parameters; the only text ever joined into SQL is constants of this module.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy.typing as npt

from fedloom.errors import NotFoundError, StoreError
from fedloom.store._base import (
    COMPLETED,
    EXPERIMENT_STATUSES,
    RUNNING,
    CheckpointRef,
    ClosingContext,
    ExperimentRecord,
    ExperimentStoreStatistics,
    RoundRecord,
    last_complete_round,
)
from fedloom.store._checkpoints import (
    CHECKPOINT_DIR_NAME,
    checkpoint_folder_relpath,
    checkpoint_relpath,
    discard_file,
    encode_arrays,
    prepare_arrays,
    publish_file,
    read_verified,
    sha256_hex,
    stage_file,
)
from fedloom.store._schema import Database
from fedloom.store._sqlite_pods import Clock
from fedloom.store._validation import (
    check_id,
    check_metrics,
    check_per_pod_metrics,
    check_round_index,
    check_status,
    check_text,
    from_json,
    to_json,
)

logger = logging.getLogger(__name__)

#: Files a store writes in an experiment's checkpoint folder: published and staged ones.
_CHECKPOINT_FILE = re.compile(r"round-\d{5,}\.safetensors|\.round-\d{5,}\.safetensors\..+\.tmp")
_EXPERIMENT_COLUMNS = "experiment_id, name, task_json, status, created_at, finished_at, result_json"


class SqliteExperimentStore(ClosingContext):
    """An :class:`~fedloom.store.ExperimentStore` in one SQLite file.

    Checkpoints are safetensors files under ``checkpoints/`` in the folder of the file.
    """

    def __init__(self, path: str | os.PathLike[str], *, clock: Clock = time.time) -> None:
        self._db = Database(path)
        self._clock = clock

    @property
    def path(self) -> Path:
        """The database file."""
        return self._db.path

    def checkpoint_folder(self, experiment_id: str) -> Path:
        """Where this store writes ``experiment_id``'s checkpoint files (it may not exist)."""
        return self._db.folder / checkpoint_folder_relpath(experiment_id)

    def create_experiment(self, name: str, task: Mapping[str, Any]) -> str:
        check_text(name, "experiment name", allow_empty=True)
        task_json = to_json(task, "task")
        experiment_id = uuid.uuid4().hex
        with self._db.transaction("create an experiment", write=True) as conn:
            conn.execute(
                "INSERT INTO experiments (experiment_id, name, task_json, status, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (experiment_id, name, task_json, RUNNING, float(self._clock())),
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
        aggregated_json = to_json(check_metrics(aggregated, "aggregated"), "aggregated")
        per_pod_json = to_json(check_per_pod_metrics(per_pod), "per_pod")
        with self._db.transaction(f"record round {index}", write=True) as conn:
            _require_running(conn, experiment_id, f"record round {index}")
            if _exists(conn, "rounds", experiment_id, index):
                raise StoreError(
                    f"round {index} of experiment {experiment_id} is already recorded; "
                    "a round is recorded once"
                )
            conn.execute(
                "INSERT INTO rounds (experiment_id, round_index, aggregated_json, per_pod_json,"
                " recorded_at) VALUES (?, ?, ?, ?, ?)",
                (experiment_id, index, aggregated_json, per_pod_json, float(self._clock())),
            )

    def save_checkpoint(
        self, experiment_id: str, round_index: int, arrays: Mapping[str, npt.NDArray[Any]]
    ) -> CheckpointRef:
        index = check_round_index(round_index)
        data = encode_arrays(prepare_arrays(arrays))
        digest = sha256_hex(data)
        action = f"save the checkpoint of round {index}"
        with self._db.transaction(action, write=True) as conn:
            _require_running(conn, experiment_id, action)
            if _exists(conn, "checkpoints", experiment_id, index):
                raise StoreError(
                    f"round {index} of experiment {experiment_id} already has a checkpoint"
                )
            relpath = checkpoint_relpath(experiment_id, index)
            final_path = self._db.folder / relpath
            created_at = float(self._clock())
            temp_path = stage_file(final_path, data)
            try:
                conn.execute(
                    "INSERT INTO checkpoints (experiment_id, round_index, relpath, sha256,"
                    " created_at) VALUES (?, ?, ?, ?, ?)",
                    (experiment_id, index, relpath, digest, created_at),
                )
                publish_file(temp_path, final_path)  # the commit follows; a crash between
            except BaseException:  # the two leaves a file no row points to: harmless
                discard_file(temp_path)
                raise
        return CheckpointRef(experiment_id, index, str(final_path), digest, created_at)

    def load_checkpoint(
        self, experiment_id: str, round_index: int | None = None
    ) -> dict[str, npt.NDArray[Any]]:
        index = None if round_index is None else check_round_index(round_index)
        with self._db.transaction("load a checkpoint", write=False) as conn:
            _require_experiment(conn, experiment_id)
            query = "SELECT round_index, relpath, sha256 FROM checkpoints WHERE experiment_id = ?"
            if index is None:
                row = conn.execute(
                    query + " ORDER BY round_index DESC LIMIT 1", (experiment_id,)
                ).fetchone()
            else:
                params = (experiment_id, index)
                row = conn.execute(query + " AND round_index = ?", params).fetchone()
        if row is None:
            which = "any" if index is None else f"round {index}'s"
            raise NotFoundError(f"experiment {experiment_id} has no checkpoint ({which})")
        label = f"of round {row[0]} of experiment {experiment_id}"
        return read_verified(self._checkpoint_path(row[1], label), row[2], label)

    def delete_checkpoints(self, experiment_id: str, round_indices: Iterable[int]) -> None:
        indices = sorted({check_round_index(index) for index in round_indices})
        action = f"delete checkpoints of experiment {experiment_id}"
        with self._db.transaction(action, write=True) as conn:
            _require_experiment(conn, experiment_id)
            removed = [
                str(row[0])
                for index in indices
                for row in conn.execute(
                    "SELECT relpath FROM checkpoints WHERE experiment_id = ? AND round_index = ?",
                    (experiment_id, index),
                )
            ]
            conn.executemany(
                "DELETE FROM checkpoints WHERE experiment_id = ? AND round_index = ?",
                [(experiment_id, index) for index in indices],
            )
        if removed:  # only now that the commit is durable
            self._remove_stray_checkpoints(experiment_id, removed)

    def finish_experiment(self, experiment_id: str, status: str, result: Mapping[str, Any]) -> None:
        check_status(status, EXPERIMENT_STATUSES[1:], "finished experiment status")
        result_json = to_json(result, "result")
        with self._db.transaction("finish an experiment", write=True) as conn:
            _require_running(conn, experiment_id, "finish it")
            conn.execute(
                "UPDATE experiments SET status = ?, result_json = ?, finished_at = ?"
                " WHERE experiment_id = ?",
                (status, result_json, float(self._clock()), experiment_id),
            )

    def reopen_experiment(self, experiment_id: str) -> ExperimentRecord:
        action = f"reopen experiment {experiment_id}"
        with self._db.transaction(action, write=True) as conn:
            status = _require_experiment(conn, experiment_id)
            if status == COMPLETED:
                raise StoreError(
                    f"experiment {experiment_id} is {COMPLETED}: there is nothing to resume; "
                    "start a new experiment instead"
                )
            rounds = [
                int(row[0])
                for row in conn.execute(
                    "SELECT round_index FROM rounds WHERE experiment_id = ?", (experiment_id,)
                )
            ]
            checkpoints = conn.execute(
                "SELECT round_index, relpath FROM checkpoints WHERE experiment_id = ?",
                (experiment_id,),
            ).fetchall()
            last = last_complete_round(rounds, (int(row[0]) for row in checkpoints))
            keep = -1 if last is None else last
            removed = [relpath for index, relpath in checkpoints if index > keep]
            conn.execute(
                "DELETE FROM rounds WHERE experiment_id = ? AND round_index > ?",
                (experiment_id, keep),
            )
            conn.execute(
                "DELETE FROM checkpoints WHERE experiment_id = ? AND round_index > ?",
                (experiment_id, keep),
            )
            conn.execute(
                "UPDATE experiments SET status = ?, finished_at = NULL, result_json = NULL"
                " WHERE experiment_id = ?",
                (RUNNING, experiment_id),
            )
            record = self._read(conn, "WHERE experiment_id = ?", (experiment_id,))[0]
        # only now that the commit is durable: a crash before it keeps every file
        self._remove_stray_checkpoints(experiment_id, removed)
        return record

    def get_experiment(self, experiment_id: str) -> ExperimentRecord:
        with self._db.transaction("read an experiment", write=False) as conn:
            _require_experiment(conn, experiment_id)
            return self._read(conn, "WHERE experiment_id = ?", (experiment_id,))[0]

    def list_experiments(self) -> list[ExperimentRecord]:
        with self._db.transaction("list experiments", write=False) as conn:
            return self._read(conn, "", ())

    def statistics(self) -> ExperimentStoreStatistics:
        """Counts of experiments (all and running), rounds and checkpoints."""
        with self._db.transaction("count experiments", write=False) as conn:
            experiments, running = conn.execute(
                "SELECT count(*), coalesce(sum(status = ?), 0) FROM experiments", (RUNNING,)
            ).fetchone()
            rounds = conn.execute("SELECT count(*) FROM rounds").fetchone()[0]
            checkpoints = conn.execute("SELECT count(*) FROM checkpoints").fetchone()[0]
        return ExperimentStoreStatistics(experiments, running, rounds, checkpoints)

    def close(self) -> None:
        """Release the store; closing twice is allowed, any other call afterwards is not."""
        self._db.close()

    def _read(
        self, conn: sqlite3.Connection, where: str, params: tuple[str, ...]
    ) -> list[ExperimentRecord]:
        # ``where`` is one of two constant strings above; values travel only as parameters.
        rows = conn.execute(
            f"SELECT {_EXPERIMENT_COLUMNS} FROM experiments {where} ORDER BY rowid", params
        ).fetchall()
        rounds: dict[str, list[RoundRecord]] = {row[0]: [] for row in rows}
        checkpoints: dict[str, list[CheckpointRef]] = {row[0]: [] for row in rows}
        for exp_id, index, aggregated, per_pod, recorded_at in conn.execute(
            "SELECT experiment_id, round_index, aggregated_json, per_pod_json, recorded_at"
            f" FROM rounds {where} ORDER BY experiment_id, round_index",
            params,
        ):
            rounds[exp_id].append(
                RoundRecord(index, from_json(aggregated), from_json(per_pod), recorded_at)
            )
        for exp_id, index, relpath, digest, created_at in conn.execute(
            "SELECT experiment_id, round_index, relpath, sha256, created_at"
            f" FROM checkpoints {where} ORDER BY experiment_id, round_index",
            params,
        ):
            path = str(self._checkpoint_path(relpath, f"of round {index} of {exp_id}"))
            checkpoints[exp_id].append(CheckpointRef(exp_id, index, path, digest, created_at))
        return [
            ExperimentRecord(
                experiment_id=row[0],
                name=row[1],
                task=from_json(row[2]),
                status=row[3],
                created_at=row[4],
                finished_at=row[5],
                result=from_json(row[6]),
                rounds=rounds[row[0]],
                checkpoints=checkpoints[row[0]],
            )
            for row in rows
        ]

    def _remove_stray_checkpoints(self, experiment_id: str, removed: Sequence[str]) -> None:
        """Delete checkpoint files of ``experiment_id`` that no checkpoint row points to.

        Those are the files of ``removed`` rows, and any file an earlier crash left behind
        (published but never committed, or staged and never published). The deletion holds
        the write lock, and a checkpoint is staged, published and committed under that
        lock, so a file a concurrent save is writing (in this or another process) is never
        taken. A failure here loses nothing: the files stay, unreferenced, and a later
        save of the same round replaces them.
        """
        label = f"of experiment {experiment_id}"
        try:
            candidates = {self._checkpoint_path(relpath, label) for relpath in removed}
            folder = self._checkpoint_path(checkpoint_folder_relpath(experiment_id), label)
            if folder.parent == self._db.folder / CHECKPOINT_DIR_NAME and folder.is_dir():
                candidates |= {
                    path for path in folder.iterdir() if _CHECKPOINT_FILE.fullmatch(path.name)
                }
            if not candidates:
                return
            with self._db.transaction(f"remove stray checkpoints {label}", write=True) as conn:
                referenced = {
                    self._checkpoint_path(row[0], label)
                    for row in conn.execute(
                        "SELECT relpath FROM checkpoints WHERE experiment_id = ?",
                        (experiment_id,),
                    )
                }
                for path in sorted(candidates - referenced):
                    try:
                        path.unlink(missing_ok=True)
                    except OSError as exc:
                        logger.warning("could not remove stray checkpoint file %s: %s", path, exc)
        except (OSError, StoreError) as exc:
            logger.warning("could not remove stray checkpoint files %s: %s", label, exc)

    def _checkpoint_path(self, relpath: str, label: str) -> Path:
        parts = PurePosixPath(relpath)
        if parts.is_absolute() or ".." in parts.parts:
            raise StoreError(f"checkpoint {label} has an unsafe path {relpath!r} in the store")
        return self._db.folder.joinpath(*parts.parts)


def _require_experiment(conn: sqlite3.Connection, experiment_id: str) -> str:
    row = conn.execute(
        "SELECT status FROM experiments WHERE experiment_id = ?",
        (check_id(experiment_id, "experiment"),),
    ).fetchone()
    if row is None:
        raise NotFoundError(f"no experiment with id {experiment_id!r}")
    return str(row[0])


def _require_running(conn: sqlite3.Connection, experiment_id: str, action: str) -> None:
    status = _require_experiment(conn, experiment_id)
    if status != RUNNING:
        raise StoreError(f"experiment {experiment_id} is already {status}; cannot {action}")


def _exists(conn: sqlite3.Connection, table: str, experiment_id: str, round_index: int) -> bool:
    row = conn.execute(_EXISTS_QUERIES[table], (experiment_id, round_index)).fetchone()
    return row is not None


_EXISTS_QUERIES = {
    "rounds": "SELECT 1 FROM rounds WHERE experiment_id = ? AND round_index = ?",
    "checkpoints": "SELECT 1 FROM checkpoints WHERE experiment_id = ? AND round_index = ?",
}
