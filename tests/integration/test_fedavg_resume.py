"""A FedAvg experiment whose modeller crashed goes on where it stopped.

Real in-process pods and hub (LocalFederation), a real SQLite experiment store. The
modeller "crashes" in round 2 between recording the round's metrics and saving its
checkpoint: the store it writes to stops taking writes there, as a dead process would,
and the experiment stays "running" with half a round. ``Modeller.run(...,
resume=experiment_id)`` goes on with it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedloom import (
    Analytics,
    AnalyticsRequest,
    FedAvg,
    FedAvgResult,
    SqliteExperimentStore,
    TaskResult,
    TrainingConfig,
    resume_experiment,
    run_local,
)
from fedloom.errors import ConfigError, NotFoundError, StoreError
from fedloom.pod import ArraySource, MemoryPodStore
from fedloom.protocols import TaskProtocol

from .conftest import TINY_MLP, labelled_pods

SIZES = {"pod-a": 40, "pod-b": 64, "pod-c": 90, "pod-d": 52}
TRAINING = TrainingConfig(epochs=2, batch_size=16, learning_rate=0.1)


def pods() -> dict[str, ArraySource]:
    return labelled_pods(SIZES)


def fedavg(**changes: Any) -> FedAvg:
    options: dict[str, Any] = {
        "model": TINY_MLP,
        "rounds": 3,
        "training": TRAINING,
        "seed": 11,
        "validation_fraction": 0.25,
    }
    return FedAvg(**(options | changes))


class _CrashError(Exception):
    """The modeller process dies here."""


class CrashingStore(SqliteExperimentStore):
    """Dies while saving the checkpoint of ``crash_round``; a dead process writes no more."""

    def __init__(self, path: Path, crash_round: int) -> None:
        super().__init__(path)
        self.crash_round = crash_round
        self.crashed = False

    def save_checkpoint(self, experiment_id: str, round_index: int, arrays: Any) -> Any:
        if round_index == self.crash_round:
            self.crashed = True
            raise _CrashError(f"the modeller died saving round {round_index}")
        return super().save_checkpoint(experiment_id, round_index, arrays)

    def finish_experiment(self, experiment_id: str, status: str, result: Mapping[str, Any]) -> None:
        if not self.crashed:
            super().finish_experiment(experiment_id, status, result)


def crash_in_round_2(path: Path, protocol: FedAvg) -> str:
    store = CrashingStore(path, crash_round=2)
    try:
        with pytest.raises(_CrashError):
            run_local(protocol, pods(), modeller_store=store, name="crashy", keep_checkpoints="all")
        (record,) = store.list_experiments()
    finally:
        store.close()
    assert record.status == "running"
    assert [r.round_index for r in record.rounds] == [0, 1, 2]  # round 2: metrics only
    assert [c.round_index for c in record.checkpoints] == [0, 1]
    return record.experiment_id


def resume(path: Path, protocol: FedAvg, experiment_id: str) -> tuple[TaskResult, dict[str, Any]]:
    """Resume the experiment through the modeller; the pods' released records."""
    pod_stores = {pod: MemoryPodStore() for pod in SIZES}
    with SqliteExperimentStore(path) as store:
        run = run_local(
            protocol,
            pods(),
            pod_stores=pod_stores,
            modeller_store=store,
            resume=experiment_id,
            keep_checkpoints="all",
        )
    assert run.experiment_id == experiment_id
    released = {pod: s.get_task_run(run.task_id).result for pod, s in pod_stores.items()}
    return run, released


def without_seconds(per_pod: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    return {pod: {k: v for k, v in m.items() if k != "seconds"} for pod, m in per_pod.items()}


def test_a_crashed_experiment_resumes_and_ends_as_an_uninterrupted_one(tmp_path: Path) -> None:
    path = tmp_path / "modeller.db"
    experiment_id = crash_in_round_2(path, fedavg())
    run, released = resume(path, fedavg(), experiment_id)

    # rounds 0 and 1 were not run again: the pods got round 2 only
    for pod in SIZES:
        assert list(run.timings[pod]) == ["accept", "round-2"], pod
        assert released[pod] is not None and released[pod]["rounds"] == [2], pod
    result = run.result
    assert isinstance(result, FedAvgResult)
    assert [m.round_index for m in result.history] == [0, 1, 2]

    # training is seeded per pod and round (round_seed): with every pod sampled, the
    # resumed run is bit for bit the uninterrupted one
    straight = run_local(fedavg(), pods()).result
    assert sorted(result.parameters) == sorted(straight.parameters)
    for key, array in straight.parameters.items():
        assert result.parameters[key].dtype == array.dtype, key
        assert np.array_equal(result.parameters[key], array), key
    for got, want in zip(result.history, straight.history, strict=True):
        assert got.pods == want.pods == sorted(SIZES)
        assert got.aggregated == want.aggregated
        assert without_seconds(got.per_pod) == without_seconds(want.per_pod)

    with SqliteExperimentStore(path) as store:
        record = store.get_experiment(experiment_id)
        assert record.status == "completed" and record.name == "crashy"
        assert record.result == fedavg().summarise(result)
        assert [r.round_index for r in record.rounds] == [0, 1, 2]
        assert [c.round_index for c in record.checkpoints] == [0, 1, 2]
        latest = store.load_checkpoint(experiment_id)
        assert all(np.array_equal(latest[k], v) for k, v in straight.parameters.items())
        assert len(store.list_experiments()) == 1


def test_an_experiment_that_kept_only_its_last_and_best_checkpoints_resumes(
    tmp_path: Path,
) -> None:
    """The default retention drops checkpoints as rounds go; the last one is always kept,
    so a crash still resumes from the round before it, bit for bit."""
    path = tmp_path / "modeller.db"
    store = CrashingStore(path, crash_round=3)
    try:
        with pytest.raises(_CrashError):
            run_local(fedavg(rounds=5), pods(), modeller_store=store, name="pruned")
        (record,) = store.list_experiments()
    finally:
        store.close()
    kept = [c.round_index for c in record.checkpoints]
    assert kept[-1] == 2 and len(kept) <= 2  # the last, and the best when it is another
    with SqliteExperimentStore(path) as store:  # the default retention again
        run = run_local(fedavg(rounds=5), pods(), modeller_store=store, resume=record.experiment_id)
        done = store.get_experiment(record.experiment_id)
    assert list(run.timings["pod-a"]) == ["accept", "round-3", "round-4"]
    straight = run_local(fedavg(rounds=5), pods()).result
    for key, array in straight.parameters.items():
        assert np.array_equal(run.result.parameters[key], array), key
    # over the whole experiment, rounds from before the crash included
    best = min(done.rounds, key=lambda r: r.aggregated["validation_loss"]).round_index
    assert [c.round_index for c in done.checkpoints] == sorted({best, 4})


def test_a_resumed_run_samples_from_seed_and_next_round(tmp_path: Path) -> None:
    protocol = fedavg(rounds=4, fraction=0.5)
    path = tmp_path / "modeller.db"
    experiment_id = crash_in_round_2(path, protocol)
    run, released = resume(path, protocol, experiment_id)

    # a run from round 0 samples as it always has: one generator seeded with the seed
    fresh = np.random.default_rng(protocol.seed)
    expected = [protocol._sample(sorted(SIZES), fresh) for _ in range(2)]
    # the resumed rounds draw from a generator seeded with (seed, next_round)
    resumed = np.random.default_rng((protocol.seed, 2))
    expected += [protocol._sample(sorted(SIZES), resumed) for _ in range(2)]
    assert [m.pods for m in run.result.history] == expected
    assert all(len(pods) == 2 for pods in expected)
    for pod in SIZES:
        assert released[pod]["rounds"] == [r for r in (2, 3) if pod in expected[r]], pod


# --- a real crash of the process that reopens ------------------------------------------

_REOPEN_AND_DIE = """
import os, sys
from fedloom.store import SqliteExperimentStore
def die(*args):
    os._exit(17)
setattr(SqliteExperimentStore, sys.argv[3], die)
SqliteExperimentStore(sys.argv[1]).reopen_experiment(sys.argv[2])
"""


def _reopen_and_die_in(method: str, path: Path, experiment_id: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_REOPEN_AND_DIE), str(path), experiment_id, method],
        check=False,
        timeout=120,
        env=os.environ | {"PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 17


def _half_written(path: Path) -> tuple[str, list[str]]:
    with SqliteExperimentStore(path) as store:
        experiment_id = store.create_experiment("e", {})
        for index in (0, 1, 2):
            store.record_round(experiment_id, index, {"loss": 1.0}, {})
        for index in (0, 1, 3):
            store.save_checkpoint(experiment_id, index, {"w": np.full(2, float(index))})
        store.finish_experiment(experiment_id, "failed", {"error": "x"})
    folder = path.parent / "checkpoints" / experiment_id
    return experiment_id, sorted(os.listdir(folder))


def test_a_process_killed_inside_the_reopen_transaction_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "modeller.db"
    experiment_id, files = _half_written(path)
    with SqliteExperimentStore(path) as store:
        before = store.get_experiment(experiment_id)
    _reopen_and_die_in("_read", path, experiment_id)  # after the DELETEs, before the commit
    with SqliteExperimentStore(path) as store:
        assert store.get_experiment(experiment_id) == before
    assert sorted(os.listdir(path.parent / "checkpoints" / experiment_id)) == files


def test_a_process_killed_after_the_reopen_commit_leaves_only_harmless_files(
    tmp_path: Path,
) -> None:
    path = tmp_path / "modeller.db"
    experiment_id, files = _half_written(path)
    _reopen_and_die_in("_remove_stray_checkpoints", path, experiment_id)
    folder = path.parent / "checkpoints" / experiment_id
    assert sorted(os.listdir(folder)) == files  # round 3's file outlived its row
    with SqliteExperimentStore(path) as store:
        point = resume_experiment(store, experiment_id)  # reopening again sweeps it
        assert point.next_round == 2 and point.parameters is not None
        assert np.array_equal(point.parameters["w"], np.full(2, 1.0))
        assert sorted(os.listdir(folder)) == files[:2]
        record = store.get_experiment(experiment_id)
        assert record.status == "running" and len(record.rounds) == 2


# --- what cannot be resumed is refused before any pod is asked ------------------------


def _refused(path: Path | None, protocol: TaskProtocol, experiment_id: str, error: type) -> None:
    pod_stores = {pod: MemoryPodStore() for pod in SIZES}
    store = None if path is None else SqliteExperimentStore(path)
    try:
        with pytest.raises(error):
            run_local(
                protocol, pods(), pod_stores=pod_stores, modeller_store=store, resume=experiment_id
            )
    finally:
        if store is not None:
            store.close()
    assert all(s.task_runs() == [] for s in pod_stores.values())  # no pod was asked


def test_resumes_that_cannot_work_are_typed_errors_and_ask_no_pod(tmp_path: Path) -> None:
    path = tmp_path / "modeller.db"
    experiment_id = crash_in_round_2(path, fedavg())
    _refused(None, fedavg(), experiment_id, ConfigError)  # no store to resume from
    _refused(path, fedavg(seed=12), experiment_id, ConfigError)  # another task
    _refused(path, Analytics(AnalyticsRequest(("count",), ("f0",))), experiment_id, ConfigError)
    _refused(path, fedavg(), "0" * 32, NotFoundError)
    run, _ = resume(path, fedavg(rounds=4), experiment_id)  # more rounds: the same task
    assert [m.round_index for m in run.result.history] == [0, 1, 2, 3]
    _refused(path, fedavg(rounds=4), experiment_id, StoreError)  # completed: nothing left


def test_a_resumed_fedadam_run_is_bitwise_the_uninterrupted_one(tmp_path: Path) -> None:
    """FedAdam's server state (m, v, steps) is in every checkpoint, so round 2 of the
    resumed run starts from the momentum rounds 0 and 1 built up."""
    from fedloom.strategies import STATE_PREFIX, StrategySpec

    adam = fedavg(strategy=StrategySpec("fedadam", {"eta": 0.05}))
    path = tmp_path / "modeller.db"
    experiment_id = crash_in_round_2(path, adam)
    with SqliteExperimentStore(path) as store:
        saved = store.load_checkpoint(experiment_id, 1)
    assert int(saved[f"{STATE_PREFIX}steps"]) == 2
    assert any(name.startswith(f"{STATE_PREFIX}m/") for name in saved)

    run, _ = resume(path, adam, experiment_id)
    straight = run_local(adam, pods()).result
    plain = run_local(fedavg(), pods()).result
    assert sorted(run.result.parameters) == sorted(straight.parameters)
    for key, array in straight.parameters.items():
        assert np.array_equal(run.result.parameters[key], array), key
    assert any(not np.array_equal(plain.parameters[k], v) for k, v in straight.parameters.items())


def test_resuming_with_another_strategy_is_refused(tmp_path: Path) -> None:
    from fedloom.strategies import StrategySpec

    path = tmp_path / "modeller.db"
    experiment_id = crash_in_round_2(path, fedavg())
    with pytest.raises(ConfigError, match="ran another task"):
        resume(path, fedavg(strategy=StrategySpec("fedadam")), experiment_id)
