"""Resuming an experiment: the store's reopen (SQLite files), ResumePoint, and FedAvg's side.

The store contract itself (which rounds survive a reopen, what is refused) is checked for
every store by the conformance suite; this file covers what it cannot: checkpoint files
on disk, the protocol-layer helper and FedAvg's handling of a resume point.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest

from fedloom import Analytics, FedAvg, ModelSpec, ResultsOnly, resume_experiment
from fedloom.algorithms.ml import state_to_arrays
from fedloom.errors import ConfigError, NotFoundError, StoreError
from fedloom.plugins import ResumePoint, build_model
from fedloom.protocols import ModellerContext, RoundMetrics, TaskProtocol
from fedloom.session import ModellerMailbox
from fedloom.store import (
    ExperimentStore,
    MemoryExperimentStore,
    RoundRecord,
    SqliteExperimentStore,
    last_complete_round,
)

TINY_MLP = ModelSpec("mlp", {"in_features": 4, "hidden": [8], "out_features": 2})
PER_POD = {"pod-b": {"loss": 0.5, "seconds": 0.1}, "pod-a": {"loss": 0.25, "seconds": 0.2}}


@pytest.fixture(params=["memory", "sqlite"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ExperimentStore]:
    store: ExperimentStore = (
        MemoryExperimentStore()
        if request.param == "memory"
        else SqliteExperimentStore(tmp_path / "modeller.db")
    )
    yield store
    store.close()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SqliteExperimentStore]:
    with SqliteExperimentStore(tmp_path / "modeller.db") as store:
        yield store


def _model_arrays(seed: int) -> dict[str, np.ndarray]:
    return state_to_arrays(build_model(TINY_MLP, seed=seed))


def _experiment(store: ExperimentStore, rounds: list[int], checkpoints: list[int]) -> str:
    experiment_id = store.create_experiment("e", {"protocol": "fedavg"})
    for index in rounds:
        store.record_round(experiment_id, index, {"loss": 1.0 / (index + 1)}, PER_POD)
    for index in checkpoints:
        store.save_checkpoint(experiment_id, index, _model_arrays(index))
    return experiment_id


def _files(store: SqliteExperimentStore, experiment_id: str) -> list[str]:
    folder = store.path.parent / "checkpoints" / experiment_id
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


# --- store: last_complete_round and checkpoint files ------------------------------------


@pytest.mark.parametrize(
    ("rounds", "checkpoints", "expected"),
    [([], [], None), ([0, 1], [], None), ([0, 1, 2], [0, 1], 1), ([0, 2], [1, 2, 3], 2)],
)
def test_last_complete_round(rounds: list[int], checkpoints: list[int], expected: int) -> None:
    assert last_complete_round(rounds, checkpoints) == expected


def test_reopen_deletes_the_files_of_removed_checkpoints_and_keeps_the_rest(
    sqlite_store: SqliteExperimentStore,
) -> None:
    experiment_id = _experiment(sqlite_store, [0, 1, 2], [0, 1, 3])
    other = _experiment(sqlite_store, [0], [0, 1])
    kept = {
        ref.round_index: Path(ref.path).read_bytes()
        for ref in sqlite_store.get_experiment(experiment_id).checkpoints[:2]
    }
    record = sqlite_store.reopen_experiment(experiment_id)
    assert [c.round_index for c in record.checkpoints] == [0, 1]
    assert _files(sqlite_store, experiment_id) == [
        "round-00000.safetensors",
        "round-00001.safetensors",
    ]
    assert {c.round_index: Path(c.path).read_bytes() for c in record.checkpoints} == kept
    assert len(_files(sqlite_store, other)) == 2  # another experiment's files are its own


def test_reopen_sweeps_files_an_earlier_crash_left_behind(
    sqlite_store: SqliteExperimentStore,
) -> None:
    experiment_id = _experiment(sqlite_store, [0], [0])
    folder = sqlite_store.path.parent / "checkpoints" / experiment_id
    # published but never committed, staged but never published, and a file of the user's
    (folder / "round-00001.safetensors").write_bytes(b"half a save")
    (folder / ".round-00001.safetensors.k2j4.tmp").write_bytes(b"staged")
    (folder / "notes.txt").write_text("mine")
    sqlite_store.reopen_experiment(experiment_id)
    assert _files(sqlite_store, experiment_id) == ["notes.txt", "round-00000.safetensors"]


def test_a_failed_reopen_changes_neither_rows_nor_files(
    sqlite_store: SqliteExperimentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment_id = _experiment(sqlite_store, [0, 1, 2], [0, 1, 3])
    sqlite_store.finish_experiment(experiment_id, "failed", {"error": "boom"})
    before, files = sqlite_store.get_experiment(experiment_id), _files(sqlite_store, experiment_id)

    def fail_late(*args: Any) -> Any:  # after the DELETEs and the UPDATE, before the commit
        raise StoreError("disk on fire")

    monkeypatch.setattr(SqliteExperimentStore, "_read", fail_late)
    with pytest.raises(StoreError, match="disk on fire"):
        sqlite_store.reopen_experiment(experiment_id)
    monkeypatch.undo()
    assert sqlite_store.get_experiment(experiment_id) == before
    assert _files(sqlite_store, experiment_id) == files


def test_files_left_by_a_reopen_that_stopped_after_its_commit_do_no_harm(
    sqlite_store: SqliteExperimentStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    experiment_id = _experiment(sqlite_store, [0, 1], [0, 1, 2])
    monkeypatch.setattr(SqliteExperimentStore, "_remove_stray_checkpoints", lambda *a: None)
    sqlite_store.reopen_experiment(experiment_id)
    monkeypatch.undo()
    assert "round-00002.safetensors" in _files(sqlite_store, experiment_id)  # unreferenced
    with pytest.raises(NotFoundError):
        sqlite_store.load_checkpoint(experiment_id, 2)
    sqlite_store.record_round(experiment_id, 2, {"loss": 0.1}, {})
    sqlite_store.save_checkpoint(experiment_id, 2, {"w": np.arange(3.0)})  # replaces it
    np.testing.assert_array_equal(sqlite_store.load_checkpoint(experiment_id)["w"], np.arange(3.0))
    sqlite_store.reopen_experiment(experiment_id)  # nothing stray any more: nothing goes
    assert len(_files(sqlite_store, experiment_id)) == 3


def test_a_reopen_is_durable(tmp_path: Path) -> None:
    with SqliteExperimentStore(tmp_path / "m.db") as store:
        experiment_id = _experiment(store, [0, 1, 2], [0, 1])
        store.finish_experiment(experiment_id, "failed", {"error": "x"})
        reopened = store.reopen_experiment(experiment_id)
    with SqliteExperimentStore(tmp_path / "m.db") as store:
        assert store.get_experiment(experiment_id) == reopened
        assert reopened.status == "running" and reopened.result is None


# --- ResumePoint and resume_experiment -------------------------------------------------


def _round(index: int) -> RoundRecord:
    return RoundRecord(index, {"loss": 0.5}, {}, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"next_round": -1}, "next_round"),
        ({"next_round": True}, "next_round"),
        ({"next_round": 1.0}, "next_round"),
        ({"next_round": 2}, "None only when next_round is 0"),
        ({"next_round": 0, "parameters": {}}, "None only when next_round is 0"),
        ({"next_round": 1, "parameters": {"w": [1.0]}}, "'w'"),
        ({"next_round": 1, "parameters": {}, "rounds": (_round(1),)}, "before round 1"),
        ({"next_round": 3, "parameters": {}, "rounds": (_round(1), _round(0))}, "order"),
        ({"next_round": 3, "parameters": {}, "rounds": (_round(1), _round(1))}, "order"),
        ({"next_round": 3, "parameters": {}, "rounds": ({"round_index": 0},)}, "RoundRecord"),
    ],
)
def test_bad_resume_points_are_config_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ResumePoint(**kwargs)


def test_resume_after_a_crash_mid_round(any_store: ExperimentStore) -> None:
    experiment_id = _experiment(any_store, [0, 1, 2], [0, 1])  # round 2 has no checkpoint
    point = resume_experiment(any_store, experiment_id)
    assert point.next_round == 2
    assert point.parameters is not None
    assert all(np.array_equal(point.parameters[k], v) for k, v in _model_arrays(1).items())
    assert [r.round_index for r in point.rounds] == [0, 1]
    assert point.rounds[1].per_pod == PER_POD
    record = any_store.get_experiment(experiment_id)
    assert record.status == "running" and len(record.rounds) == 2


def test_resume_a_failed_experiment_with_no_complete_round_starts_over(
    any_store: ExperimentStore,
) -> None:
    experiment_id = _experiment(any_store, [0], [])
    any_store.finish_experiment(experiment_id, "failed", {"error": "x"})
    point = resume_experiment(any_store, experiment_id)
    assert (point.next_round, point.parameters, point.rounds) == (0, None, ())
    record = any_store.get_experiment(experiment_id)
    assert record.status == "running" and record.rounds == [] and record.result is None


def test_resume_refuses_completed_and_unknown_experiments(any_store: ExperimentStore) -> None:
    experiment_id = _experiment(any_store, [0, 1], [0, 1])
    any_store.finish_experiment(experiment_id, "completed", {})
    before = any_store.list_experiments()
    with pytest.raises(StoreError, match="completed") as caught:
        resume_experiment(any_store, experiment_id)
    assert not isinstance(caught.value, NotFoundError)
    with pytest.raises(NotFoundError):
        resume_experiment(any_store, "0" * 32)
    assert any_store.list_experiments() == before


def test_resume_with_a_damaged_checkpoint_writes_nothing(
    sqlite_store: SqliteExperimentStore,
) -> None:
    experiment_id = _experiment(sqlite_store, [0, 1, 2], [0, 1])
    sqlite_store.finish_experiment(experiment_id, "failed", {"error": "x"})
    Path(sqlite_store.get_experiment(experiment_id).checkpoints[1].path).write_bytes(b"junk")
    before = sqlite_store.get_experiment(experiment_id)
    with pytest.raises(StoreError, match="modified or corrupted"):
        resume_experiment(sqlite_store, experiment_id)
    assert sqlite_store.get_experiment(experiment_id) == before


# --- FedAvg ------------------------------------------------------------------------------


def test_only_fedavg_is_resumable() -> None:
    assert FedAvg.resumable is True
    assert TaskProtocol.resumable is False
    assert Analytics.resumable is False and ResultsOnly.resumable is False


def test_round_metrics_from_a_record() -> None:
    record = RoundRecord(4, {"loss": 0.3}, PER_POD, 12.5)
    metrics = RoundMetrics.from_record(record)
    assert metrics == RoundMetrics(4, ["pod-a", "pod-b"], {"loss": 0.3}, PER_POD, {}, 0.0)
    metrics.per_pod["pod-a"]["loss"] = 9.0
    assert record.per_pod["pod-a"]["loss"] == 0.25  # a copy


async def _run_without_pods(protocol: FedAvg, point: ResumePoint) -> Any:
    """FedAvg's modeller side with a mailbox that fails any use: no round may be sent."""
    mailbox = cast(ModellerMailbox, object())
    return await protocol.run_modeller(mailbox, ModellerContext(resume=point))


@pytest.mark.parametrize("rounds", [2, 3])
async def test_a_resume_past_the_last_round_sends_nothing(rounds: int) -> None:
    parameters = _model_arrays(5)
    history = (RoundRecord(0, {"loss": 1.0}, PER_POD, 0.0), RoundRecord(2, {"loss": 0.5}, {}, 0.0))
    result = await _run_without_pods(
        FedAvg(TINY_MLP, rounds=rounds), ResumePoint(3, parameters, history)
    )
    assert [m.round_index for m in result.history] == [0, 2]
    assert result.history[0].pods == ["pod-a", "pod-b"] and result.history[1].aggregated == {
        "loss": 0.5
    }
    assert sorted(result.parameters) == sorted(parameters)
    assert all(np.array_equal(result.parameters[k], v) for k, v in parameters.items())
    parameters[next(iter(parameters))] += 1.0  # the result holds copies
    assert not all(np.array_equal(result.parameters[k], v) for k, v in parameters.items())


def _renamed(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    first = next(iter(arrays))
    return {("renamed" if key == first else key): value for key, value in arrays.items()}


def _extra(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return arrays | {"extra": np.zeros(1, dtype=np.float32)}


def _dropped(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return dict(list(arrays.items())[1:])


def _reshaped(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    first = next(iter(arrays))
    return arrays | {first: arrays[first].reshape(-1)}


def _retyped(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    first = next(iter(arrays))
    return arrays | {first: arrays[first].astype(np.float64)}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_renamed, r"missing \['.+'\], unknown \['renamed'\]"),
        (_extra, r"unknown \['extra'\]"),
        (_dropped, r"missing \['.+'\]"),
        (_reshaped, r"float32\[\d+\], the model has float32\[\d+, \d+\]"),
        (_retyped, r"float64\[\d+, \d+\], the model has float32"),
    ],
)
async def test_a_checkpoint_that_does_not_fit_the_model_is_a_config_error(
    change: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]], message: str
) -> None:
    point = ResumePoint(2, change(_model_arrays(0)), ())
    with pytest.raises(ConfigError, match=f"round 1 does not fit model 'mlp'.*{message}"):
        await _run_without_pods(FedAvg(TINY_MLP, rounds=5), point)
