"""The ExperimentStore checks of :mod:`fedloom.testing._store_conformance`.

They run with the helpers of :mod:`fedloom.testing._store_check_kit`, which this module
also passes on to the conformance suite.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fedloom.errors import ConfigError, NotFoundError, StoreError
from fedloom.store import ExperimentRecord, ExperimentStore
from fedloom.testing._store_check_kit import (
    _AGG,
    _ARRAYS,
    _BAD_METRICS,
    _PER_POD,
    _TASK,
    _UNKNOWN_ID,
    BAD_JSON,
    _same_arrays,
    expect,
    expect_concurrent_calls_succeed,
    raises,
    run_check,
)

__all__ = ["BAD_JSON", "EXPERIMENT_CHECKS", "expect", "raises", "run_check"]


def _is_experiment_store(store: ExperimentStore) -> None:
    expect(isinstance(store, ExperimentStore), "does not implement the ExperimentStore methods")


def _create_and_get(store: ExperimentStore) -> None:
    first, second = store.create_experiment("mnist", _TASK), store.create_experiment("", {})
    for experiment_id in (first, second):
        expect(isinstance(experiment_id, str) and len(experiment_id) == 32, "id is not uuid hex")
        int(experiment_id, 16)
    expect(first != second, "two experiments got the same id")
    record = store.get_experiment(first)
    expect(record.experiment_id == first and record.name == "mnist", f"wrong record {record}")
    expect(record.task == _TASK, f"task read back as {record.task}")
    expect(record.status == "running" and record.finished_at is None, "new one is not running")
    expect(record.result is None and record.rounds == [] and record.checkpoints == [], "not empty")
    expect(isinstance(record.created_at, float), "created_at is not a float")
    with raises(ConfigError, "a name that is not a str"):
        store.create_experiment(7, {})  # type: ignore[arg-type]


def _task_must_be_jsonable(store: ExperimentStore) -> None:
    for task, key in [*BAD_JSON, ([1, 2], "")]:
        with raises(ConfigError, f"task {task!r}", mentions=key):
            store.create_experiment("bad", task)
    expect(store.list_experiments() == [], "a refused task was written")
    experiment_id = store.create_experiment("t", {"pair": (1, 2), "big": 2**70, "f": 1e-300})
    task = store.get_experiment(experiment_id).task
    expect(task == {"pair": [1, 2], "big": 2**70, "f": 1e-300}, f"task read back as {task}")


def _rounds_in_order(store: ExperimentStore) -> None:
    experiment_id = store.create_experiment("e", _TASK)
    for index in (2, 0, 1):
        store.record_round(experiment_id, index, {**_AGG, "round": index}, _PER_POD)
    store.record_round(experiment_id, 3, {"loss": np.float64(0.5)}, {})
    rounds = store.get_experiment(experiment_id).rounds
    expect([r.round_index for r in rounds] == [0, 1, 2, 3], "rounds not ordered by index")
    expect(rounds[1].aggregated == {**_AGG, "round": 1}, f"read back {rounds[1].aggregated}")
    expect(rounds[1].per_pod == _PER_POD, f"per_pod read back {rounds[1].per_pod}")
    expect(rounds[3].aggregated == {"loss": 0.5} and rounds[3].per_pod == {}, "round 3 wrong")
    expect(all(isinstance(v, float) for v in rounds[0].aggregated.values()), "not floats")


def _bad_rounds_refused(store: ExperimentStore) -> None:
    experiment_id = store.create_experiment("e", _TASK)
    store.record_round(experiment_id, 0, _AGG, _PER_POD)
    before = store.get_experiment(experiment_id)
    with raises(StoreError, "recording round 0 twice", unless=NotFoundError):
        store.record_round(experiment_id, 0, {"loss": 9.0}, {})
    for aggregated, per_pod, key in _BAD_METRICS:
        with raises(ConfigError, f"metrics {aggregated!r} / {per_pod!r}", mentions=key):
            store.record_round(experiment_id, 1, aggregated, per_pod)
    for index in (-1, True, 1.5, "1", None):
        with raises(ConfigError, f"round_index {index!r}"):
            store.record_round(experiment_id, index, _AGG, {})  # type: ignore[arg-type]
    expect(store.get_experiment(experiment_id) == before, "a refused round changed the record")


def _unknown_experiment(store: ExperimentStore) -> None:
    calls: list[tuple[str, Callable[[Any], object]]] = [
        ("record_round", lambda i: store.record_round(i, 0, _AGG, {})),
        ("save_checkpoint", lambda i: store.save_checkpoint(i, 0, {"w": np.zeros(2)})),
        ("load_checkpoint", store.load_checkpoint),
        ("finish_experiment", lambda i: store.finish_experiment(i, "completed", {})),
        ("reopen_experiment", store.reopen_experiment),
        ("get_experiment", store.get_experiment),
    ]
    for name, call in calls:
        for unknown in (_UNKNOWN_ID, "", 123):
            with raises(NotFoundError, f"{name}({unknown!r})"):
                call(unknown)


def _finish(store: ExperimentStore) -> None:
    experiment_id = store.create_experiment("e", _TASK)
    store.record_round(experiment_id, 0, _AGG, {})
    store.save_checkpoint(experiment_id, 0, {"w": np.ones(3)})
    for status, result in [("running", {}), ("done", {}), ("", {}), (None, {}), ("failed", [1])]:
        with raises(ConfigError, f"finish with {status!r}, {result!r}"):
            store.finish_experiment(experiment_id, status, result)  # type: ignore[arg-type]
    for result, key in BAD_JSON:
        with raises(ConfigError, f"result {result!r}", mentions=key):
            store.finish_experiment(experiment_id, "completed", result)
    expect(store.get_experiment(experiment_id).status == "running", "refused finish was written")
    store.finish_experiment(experiment_id, "completed", {"accuracy": 0.9, "notes": ["ok"]})
    record = store.get_experiment(experiment_id)
    expect(record.status == "completed", f"status is {record.status}")
    expect(record.result == {"accuracy": 0.9, "notes": ["ok"]}, f"result is {record.result}")
    expect(record.finished_at is not None and record.finished_at >= record.created_at, "when?")
    after_finish: list[tuple[str, Callable[[], object]]] = [
        ("finish twice", lambda: store.finish_experiment(experiment_id, "failed", {})),
        ("record after finish", lambda: store.record_round(experiment_id, 1, _AGG, {})),
        ("save after finish", lambda: store.save_checkpoint(experiment_id, 1, {"w": np.ones(1)})),
    ]
    for what, call in after_finish:
        with raises(StoreError, what, unless=NotFoundError):
            call()
    expect(store.get_experiment(experiment_id) == record, "a refused call changed the record")
    _same_arrays(store.load_checkpoint(experiment_id), {"w": np.ones(3)}, "load after finish")
    failed = store.create_experiment("f", {})
    store.finish_experiment(failed, "failed", {"error": "boom"})
    expect(store.get_experiment(failed).status == "failed", "failed status not kept")


def _records_are_copies(store: ExperimentStore) -> None:
    task: dict[str, Any] = {"config": {"layers": [1, 2]}}
    aggregated, per_pod = {"loss": 1.0}, {"pod-a": {"loss": 1.0}}
    experiment_id = store.create_experiment("e", task)
    store.record_round(experiment_id, 0, aggregated, per_pod)
    task["config"]["layers"].append(3)
    aggregated["loss"], per_pod["pod-a"]["loss"] = 5.0, 5.0
    record = store.get_experiment(experiment_id)
    expect(record.task == {"config": {"layers": [1, 2]}}, "store shares the caller's task")
    expect(record.rounds[0].aggregated == {"loss": 1.0}, "store shares the caller's metrics")
    expect(record.rounds[0].per_pod == {"pod-a": {"loss": 1.0}}, "store shares per_pod")
    for listed in (record, store.list_experiments()[0]):
        listed.task["config"]["layers"].clear()
        listed.rounds[0].aggregated["loss"] = 7.0
        listed.rounds[0].per_pod["pod-a"]["loss"] = 7.0
        listed.rounds.clear()
        listed.checkpoints.append(None)  # type: ignore[arg-type]
    again = store.get_experiment(experiment_id)
    expect(again.task == {"config": {"layers": [1, 2]}}, "a returned task is shared")
    expect(again.rounds[0].aggregated == {"loss": 1.0}, "a returned round is shared")
    expect(again.rounds[0].per_pod == {"pod-a": {"loss": 1.0}}, "returned per_pod is shared")
    expect(again.checkpoints == [], "a returned checkpoint list is shared")


def _checkpoints(store: ExperimentStore) -> None:
    experiment_id = store.create_experiment("e", _TASK)
    with raises(NotFoundError, "load with no checkpoint"):
        store.load_checkpoint(experiment_id)
    arrays = {name: array.copy() for name, array in _ARRAYS.items()}
    ref3 = store.save_checkpoint(experiment_id, 3, arrays)
    ref1 = store.save_checkpoint(experiment_id, 1, {"w": np.full(4, 1.0)})
    ref0 = store.save_checkpoint(experiment_id, 0, {})
    expect((ref3.experiment_id, ref3.round_index) == (experiment_id, 3), f"wrong ref {ref3}")
    expect(len(ref3.sha256) == 64 and int(ref3.sha256, 16) >= 0, "sha256 is not 64 hex digits")
    expect(bool(ref3.path) and ref3.path != ref1.path, "refs need distinct paths")
    _same_arrays(store.load_checkpoint(experiment_id, 3), _ARRAYS, "load round 3")
    _same_arrays(store.load_checkpoint(experiment_id), _ARRAYS, "latest = highest round")
    _same_arrays(store.load_checkpoint(experiment_id, 0), {}, "an empty checkpoint")
    refs = store.get_experiment(experiment_id).checkpoints
    expect(refs == [ref0, ref1, ref3], f"checkpoints listed as {refs}")
    with raises(NotFoundError, "load a round never saved"):
        store.load_checkpoint(experiment_id, 2)
    with raises(StoreError, "save round 1 twice", unless=NotFoundError):
        store.save_checkpoint(experiment_id, 1, {"w": np.zeros(4)})
    _same_arrays(store.load_checkpoint(experiment_id, 1), {"w": np.full(4, 1.0)}, "overwritten")
    arrays["dense.bias"][0] = 99.0
    loaded = store.load_checkpoint(experiment_id, 3)
    if loaded["dense.bias"].flags.writeable:
        loaded["dense.bias"][0] = 77.0
    _same_arrays(store.load_checkpoint(experiment_id, 3), _ARRAYS, "arrays shared with caller")


def _bad_checkpoints_refused(store: ExperimentStore) -> None:
    experiment_id = store.create_experiment("e", _TASK)
    bad: list[tuple[Any, str]] = [
        ({1: np.zeros(2)}, "1"),
        ({"names": np.array(["a", "b"])}, "names"),
        ({"objects": np.array([object()])}, "objects"),
        ({"wide": np.zeros(2, dtype=np.complex128)}, "wide"),
        ({"listed": [1.0, 2.0]}, "listed"),
        ([np.zeros(2)], ""),
    ]
    for arrays, key in bad:
        with raises(ConfigError, f"checkpoint {arrays!r}", mentions=key):
            store.save_checkpoint(experiment_id, 0, arrays)
    for index in (-1, True, "0"):
        with raises(ConfigError, f"checkpoint round_index {index!r}"):
            store.save_checkpoint(experiment_id, index, {"w": np.zeros(1)})  # type: ignore[arg-type]
        with raises(ConfigError, f"load round_index {index!r}"):
            store.load_checkpoint(experiment_id, index)  # type: ignore[arg-type]
    expect(store.get_experiment(experiment_id).checkpoints == [], "refused checkpoint written")
    with raises(NotFoundError, "load after refused saves"):
        store.load_checkpoint(experiment_id)


def _list_experiments(store: ExperimentStore) -> None:
    ids = [store.create_experiment(f"e{i}", {"i": i}) for i in range(4)]
    store.record_round(ids[2], 0, _AGG, _PER_POD)
    store.finish_experiment(ids[1], "failed", {"why": "test"})
    listed = store.list_experiments()
    expect([r.experiment_id for r in listed] == ids, "not listed in creation order")
    expect(listed == [store.get_experiment(i) for i in ids], "listed records differ from get")


def _rounds_and_checkpoints(
    store: ExperimentStore, rounds: list[int], checkpoints: list[int], what: str
) -> ExperimentRecord:
    """A running experiment with these rounds recorded and these checkpoints saved."""
    experiment_id = store.create_experiment(what, _TASK)
    for index in rounds:
        store.record_round(experiment_id, index, {"loss": float(index)}, _PER_POD)
    for index in checkpoints:
        store.save_checkpoint(experiment_id, index, {"w": np.full(3, float(index))})
    return store.get_experiment(experiment_id)


def _expect_rounds(record: ExperimentRecord, rounds: list[int], checkpoints: list[int]) -> None:
    got = ([r.round_index for r in record.rounds], [c.round_index for c in record.checkpoints])
    expect(
        got == (rounds, checkpoints), f"rounds, checkpoints are {got}, not {rounds, checkpoints}"
    )


def _reopen_refuses_completed(store: ExperimentStore) -> None:
    experiment_id = _rounds_and_checkpoints(store, [0, 1], [0], "done").experiment_id
    store.finish_experiment(experiment_id, "completed", {"accuracy": 0.9})
    before = store.list_experiments()
    with raises(
        StoreError, "reopen a completed experiment", mentions="completed", unless=NotFoundError
    ):
        store.reopen_experiment(experiment_id)
    expect(store.list_experiments() == before, "a refused reopen changed the store")
    with raises(StoreError, "record a round after a refused reopen", unless=NotFoundError):
        store.record_round(experiment_id, 2, _AGG, {})


def _reopen_failed(store: ExperimentStore) -> None:
    experiment_id = _rounds_and_checkpoints(store, [0, 1], [0, 1], "failed").experiment_id
    store.finish_experiment(experiment_id, "failed", {"error": "the hub went away"})
    failed = store.get_experiment(experiment_id)
    record = store.reopen_experiment(experiment_id)
    expect(record == store.get_experiment(experiment_id), "reopen returned another record")
    expect(record.status == "running", f"reopened status is {record.status}")
    expect(record.finished_at is None and record.result is None, "finished_at/result kept")
    expect(record.rounds == failed.rounds, "complete rounds were changed")
    expect(record.checkpoints == failed.checkpoints, "complete checkpoints were changed")
    expect(
        (record.name, record.task, record.created_at)
        == (failed.name, failed.task, failed.created_at),
        "reopen changed the experiment's name, task or created_at",
    )
    expect(record.last_complete_round == 1, f"last complete round {record.last_complete_round}")
    _same_arrays(store.load_checkpoint(experiment_id), {"w": np.full(3, 1.0)}, "kept checkpoint")
    store.record_round(experiment_id, 2, _AGG, _PER_POD)
    store.save_checkpoint(experiment_id, 2, {"w": np.full(3, 2.0)})
    store.finish_experiment(experiment_id, "completed", {"rounds": 3})
    done = store.get_experiment(experiment_id)
    expect(done.status == "completed" and done.result == {"rounds": 3}, f"finished as {done}")
    _expect_rounds(done, [0, 1, 2], [0, 1, 2])


def _reopen_trims_half_rounds(store: ExperimentStore) -> None:
    # metrics of round 2 recorded, the crash came before its checkpoint
    metrics_only = _rounds_and_checkpoints(store, [0, 1, 2], [0, 1], "metrics only")
    experiment_id = metrics_only.experiment_id
    record = store.reopen_experiment(experiment_id)
    _expect_rounds(record, [0, 1], [0, 1])
    expect(record.rounds == metrics_only.rounds[:2], "kept rounds changed")
    expect(record.last_complete_round == 1, f"last complete round {record.last_complete_round}")
    expect(store.get_experiment(experiment_id) == record, "reopen returned another record")
    store.record_round(experiment_id, 2, {"loss": 0.125}, {})
    store.save_checkpoint(experiment_id, 2, {"w": np.full(2, 7.0)})
    again = store.get_experiment(experiment_id)
    expect(again.rounds[2].aggregated == {"loss": 0.125}, "round 2 not recorded again")
    _same_arrays(store.load_checkpoint(experiment_id), {"w": np.full(2, 7.0)}, "new round 2")
    # the checkpoint of round 2 saved, its metrics never recorded (the other order)
    checkpoint_only = _rounds_and_checkpoints(store, [0, 1], [0, 1, 2], "checkpoint only")
    experiment_id = checkpoint_only.experiment_id
    _expect_rounds(store.reopen_experiment(experiment_id), [0, 1], [0, 1])
    _same_arrays(store.load_checkpoint(experiment_id), {"w": np.full(3, 1.0)}, "latest kept")
    with raises(NotFoundError, "load the removed checkpoint of round 2"):
        store.load_checkpoint(experiment_id, 2)
    store.save_checkpoint(experiment_id, 2, {"v": np.arange(4)})
    store.record_round(experiment_id, 2, _AGG, {})
    _same_arrays(store.load_checkpoint(experiment_id, 2), {"v": np.arange(4)}, "saved again")
    # gaps: the last round with both decides; everything after it goes
    gaps = _rounds_and_checkpoints(store, [0, 1, 3, 4], [0, 2, 3, 5], "gaps")
    _expect_rounds(store.reopen_experiment(gaps.experiment_id), [0, 1, 3], [0, 2, 3])


def _reopen_without_a_complete_round(store: ExperimentStore) -> None:
    for rounds, checkpoints in (([], []), ([0], []), ([], [0]), ([0, 2], [1])):
        record = _rounds_and_checkpoints(store, rounds, checkpoints, f"{rounds} {checkpoints}")
        reopened = store.reopen_experiment(record.experiment_id)
        _expect_rounds(reopened, [], [])
        expect(reopened.last_complete_round is None, "a complete round appeared")
        with raises(NotFoundError, f"load a checkpoint after reopening {rounds} {checkpoints}"):
            store.load_checkpoint(record.experiment_id)
        store.record_round(record.experiment_id, 0, _AGG, {})
        store.save_checkpoint(record.experiment_id, 0, {"w": np.zeros(1)})


def _reopen_running_is_idempotent(store: ExperimentStore) -> None:
    record = _rounds_and_checkpoints(store, [0, 1], [0, 1], "running")
    other = _rounds_and_checkpoints(store, [0, 1, 2], [0], "untouched")
    first = store.reopen_experiment(record.experiment_id)
    expect(first == record, "reopening a whole running experiment changed it")
    expect(store.reopen_experiment(record.experiment_id) == first, "a second reopen changed it")
    expect(store.get_experiment(other.experiment_id) == other, "reopen changed another experiment")
    _same_arrays(store.load_checkpoint(other.experiment_id), {"w": np.zeros(3)}, "other's")


def _reopen_bad_ids_change_nothing(store: ExperimentStore) -> None:
    _rounds_and_checkpoints(store, [0, 1, 2], [0, 1], "crashed")
    failed = _rounds_and_checkpoints(store, [0], [], "failed").experiment_id
    store.finish_experiment(failed, "failed", {"error": "x"})
    before = store.list_experiments()
    for unknown in (_UNKNOWN_ID, "", None, 7, failed.upper(), failed + "0"):
        with raises(NotFoundError, f"reopen_experiment({unknown!r})"):
            store.reopen_experiment(unknown)  # type: ignore[arg-type]
    expect(store.list_experiments() == before, "a reopen of an unknown id changed the store")


def _delete_checkpoints(store: ExperimentStore) -> None:
    record = _rounds_and_checkpoints(store, [0, 1, 2, 3], [0, 1, 2, 3], "retention")
    other = _rounds_and_checkpoints(store, [0], [0], "untouched")
    experiment_id = record.experiment_id
    store.delete_checkpoints(experiment_id, [0, 2, 9])  # 9 has none: skipped
    pruned = store.get_experiment(experiment_id)
    _expect_rounds(pruned, [0, 1, 2, 3], [1, 3])
    expect(pruned.rounds == record.rounds, "deleting checkpoints changed the rounds' metrics")
    with raises(NotFoundError, "load a deleted checkpoint"):
        store.load_checkpoint(experiment_id, 2)
    _same_arrays(store.load_checkpoint(experiment_id, 1), {"w": np.full(3, 1.0)}, "a kept one")
    store.delete_checkpoints(experiment_id, [3])
    expect(store.get_experiment(experiment_id).last_complete_round == 1, "resume point not 1")
    store.finish_experiment(experiment_id, "completed", {})
    store.delete_checkpoints(experiment_id, [1])  # a finished experiment may be pruned too
    _expect_rounds(store.get_experiment(experiment_id), [0, 1, 2, 3], [])
    expect(store.get_experiment(other.experiment_id) == other, "another experiment changed")
    with raises(NotFoundError, "delete checkpoints of an unknown experiment"):
        store.delete_checkpoints(_UNKNOWN_ID, [0])
    for bad in (-1, True, "0"):
        with raises(ConfigError, f"delete_checkpoints with round {bad!r}"):
            store.delete_checkpoints(other.experiment_id, [bad])  # type: ignore[list-item]
    expect(store.get_experiment(other.experiment_id) == other, "a refused delete changed it")


def _experiment_statistics(store: ExperimentStore) -> None:
    statistics = getattr(store, "statistics", None)
    if statistics is None:
        return
    expect(statistics().experiments == 0, "a new store is not empty")
    first, second = store.create_experiment("a", {}), store.create_experiment("b", {})
    store.record_round(first, 0, _AGG, {})
    store.record_round(first, 1, _AGG, {})
    store.save_checkpoint(second, 0, {"w": np.zeros(1)})
    store.finish_experiment(second, "completed", {})
    counts = statistics()
    got = (counts.experiments, counts.running, counts.rounds, counts.checkpoints)
    expect(got == (2, 1, 2, 1), f"statistics are {counts}")


def _experiment_threads(store: ExperimentStore) -> None:
    experiment_id = store.create_experiment("e", _TASK)

    def work(worker: int) -> None:
        for step in range(20):
            index = worker * 100 + step
            store.record_round(experiment_id, index, {"loss": float(index)}, {})
            if step % 5 == 0:
                store.save_checkpoint(experiment_id, index, {"w": np.full(3, index)})
                store.get_experiment(experiment_id)

    expect_concurrent_calls_succeed(work)
    record = store.get_experiment(experiment_id)
    expect(len(record.rounds) == 120 and len(record.checkpoints) == 24, "writes were lost")
    _same_arrays(store.load_checkpoint(experiment_id), {"w": np.full(3, 515)}, "latest")


def _experiment_close(store: ExperimentStore) -> None:
    experiment_id = store.create_experiment("e", _TASK)
    store.close()
    store.close()
    calls: list[tuple[str, Callable[[], object]]] = [
        ("create_experiment", lambda: store.create_experiment("e", {})),
        ("record_round", lambda: store.record_round(experiment_id, 0, _AGG, {})),
        ("save_checkpoint", lambda: store.save_checkpoint(experiment_id, 0, {})),
        ("load_checkpoint", lambda: store.load_checkpoint(experiment_id)),
        ("delete_checkpoints", lambda: store.delete_checkpoints(experiment_id, [0])),
        ("finish_experiment", lambda: store.finish_experiment(experiment_id, "failed", {})),
        ("reopen_experiment", lambda: store.reopen_experiment(experiment_id)),
        ("get_experiment", lambda: store.get_experiment(experiment_id)),
        ("list_experiments", store.list_experiments),
    ]
    for name, call in calls:
        with raises(StoreError, f"{name} on a closed store", unless=NotFoundError):
            call()


EXPERIMENT_CHECKS: list[Callable[[ExperimentStore], None]] = [
    _is_experiment_store,
    _create_and_get,
    _task_must_be_jsonable,
    _rounds_in_order,
    _bad_rounds_refused,
    _unknown_experiment,
    _finish,
    _records_are_copies,
    _checkpoints,
    _bad_checkpoints_refused,
    _list_experiments,
    _reopen_refuses_completed,
    _reopen_failed,
    _reopen_trims_half_rounds,
    _reopen_without_a_complete_round,
    _reopen_running_is_idempotent,
    _reopen_bad_ids_change_nothing,
    _delete_checkpoints,
    _experiment_statistics,
    _experiment_threads,
    _experiment_close,
]
