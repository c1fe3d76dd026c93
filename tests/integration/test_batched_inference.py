"""Batched inference over a folder of real image files, some corrupt, on real pods."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fedloom import LocalFederation, ModelSpec
from fedloom.datasources import FileSource
from fedloom.errors import AbortReason, PodResponseError
from fedloom.pod import PodPolicy, SqlitePodStore
from fedloom.protocols import BatchedInference
from fedloom.worker import IsolationSettings

from .conftest import until_idle
from .pod_events import PodEvents

MODEL = ModelSpec("mlp", {"in_features": 8 * 8 * 3, "hidden": [8], "out_features": 3})


def _images(folder: Path, count: int, corrupt: int = 0, start: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    names = []
    for index in range(start, start + count):
        pixels = rng.integers(0, 255, size=(8, 8, 3), dtype=np.uint8)
        name = f"img{index:04d}.png"
        Image.fromarray(pixels).save(folder / name)
        names.append(name)
    for index in range(corrupt):
        (folder / f"bad{index:02d}.png").write_bytes(os.urandom(64))
    return names


def _source(folder: Path) -> FileSource:
    return FileSource(folder, pattern="*.png", loader="image", loader_options={"size": [8, 8]})


async def _run(folder: Path, store_path: Path, protocol: BatchedInference, **options: Any) -> Any:
    store = SqlitePodStore(store_path)
    try:
        async with LocalFederation(
            {"pod-a": {"default": _source(folder)}},
            pod_stores={"pod-a": store},
            **options,
        ) as federation:
            try:
                return await federation.run(protocol)
            finally:  # the pod records the end of the task a moment after the modeller
                await until_idle(federation.pods["pod-a"])
    finally:
        store.close()


@pytest.mark.parametrize("isolated", [False, True], ids=["in-process", "child-process"])
@pytest.mark.async_timeout(120)
async def test_corrupt_files_are_file_level_failures_and_new_data_only(
    tmp_path: Path, isolated: bool
) -> None:
    folder = tmp_path / "images"
    good = _images(folder, 10, corrupt=3)
    isolation = IsolationSettings(heartbeat_interval=1.0) if isolated else None
    store = tmp_path / "pod.sqlite"
    task = BatchedInference(MODEL, batch_size=4)

    first = await _run(folder, store, task, isolation=isolation)
    rows = first.result.rows["pod-a"]
    assert sorted(row["file"] for row in rows) == good
    assert all(row["status"] == "ok" for row in rows)
    failures = {row["file"]: row["status"] for row in first.result.failures["pod-a"]}
    assert sorted(failures) == ["bad00.png", "bad01.png", "bad02.png"]
    assert all("file:" in status for status in failures.values()), failures
    assert first.aborted == {}

    # a second run on new data only sees just the files added since
    added = _images(folder, 2, start=100)
    again = BatchedInference(MODEL, batch_size=4, run_on_new_data_only=True)
    second = await _run(folder, store, again, isolation=isolation)
    assert sorted(row["file"] for row in second.result.rows["pod-a"]) == added

    # nothing new: the pod completes with 0 files, and the result says so
    third = await _run(folder, store, again, isolation=isolation)
    assert third.result.rows == {"pod-a": []} and third.result.no_new_data == ("pod-a",)
    assert third.aborted == {}
    # unless the task asks to fail then: NO_NEW_DATA
    strict = BatchedInference(
        MODEL, batch_size=4, run_on_new_data_only=True, fail_on_no_new_data=True
    )
    with pytest.raises(PodResponseError) as info:
        await _run(folder, store, strict, isolation=isolation)
    assert info.value.failed_pods["pod-a"].startswith("NO_NEW_DATA")

    with SqlitePodStore(store) as pod_store:
        statuses = [(r.status, r.reason) for r in pod_store.task_runs()]
    assert statuses == [
        ("completed", None),
        ("completed", None),
        ("completed", None),
        ("aborted", AbortReason.NO_NEW_DATA.value),
    ]


@pytest.mark.async_timeout(120)
async def test_usage_limit_cuts_results_exactly(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    _images(folder, 24)
    store_path = tmp_path / "pod.sqlite"
    with SqlitePodStore(store_path) as store:
        store.add_usage("mlp", 10)  # used before: 10
    policy = PodPolicy(usage_limits={"mlp": 20})
    task = BatchedInference(MODEL, batch_size=14)
    run = await _run(folder, store_path, task, policy=policy)
    # 10 used before + 14 new with limit 20 → overrun 4, allowed 10, then LIMITS_EXCEEDED
    assert len(run.result.rows["pod-a"]) == 10
    assert run.aborted["pod-a"].reason is AbortReason.LIMITS_EXCEEDED
    with SqlitePodStore(store_path) as store:
        assert store.usage("mlp") == 20
        (record,) = store.task_runs()
    assert record.reason == AbortReason.LIMITS_EXCEEDED.value


@pytest.mark.async_timeout(120)
async def test_test_run_stops_after_the_first_batch_and_status_messages(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    _images(folder, 9)
    events = PodEvents()

    async with LocalFederation({"pod-a": {"default": _source(folder)}}) as federation:
        federation.modeller.subscribe(events)
        run = await federation.run(BatchedInference(MODEL, batch_size=4, test_run=True))
        await until_idle(federation.pods["pod-a"])

    assert len(run.result.rows["pod-a"]) == 4
    seen = [(what, fields) for _, what, fields in events.seen]
    kinds = [what for what, _ in seen]
    assert kinds[:2] == ["preparing_data", "configuring_task"]
    assert ("batch_count", {"count": -1}) in seen
    assert ("batch_started", {"batch": 1}) in seen
    counts = [body["count"] for what, body in seen if what == "batch_count"]
    assert counts[0] == -1 and counts[-1] >= 1, counts  # the real count follows once known


@pytest.mark.async_timeout(120)
async def test_force_rerun_failed_files(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    _images(folder, 4, corrupt=1)
    store = tmp_path / "pod.sqlite"
    first = await _run(folder, store, BatchedInference(MODEL, batch_size=8))
    assert [row["file"] for row in first.result.failures["pod-a"]] == ["bad00.png"]
    # the owner repairs the file; only a forced re-run of failed files picks it up
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(folder / "bad00.png")
    forced = BatchedInference(
        MODEL, batch_size=8, run_on_new_data_only=True, force_rerun_failed_files=True
    )
    second = await _run(folder, store, forced)
    assert [row["file"] for row in second.result.rows["pod-a"]] == ["bad00.png"]
    assert second.result.failures["pod-a"] == []


@pytest.mark.async_timeout(120)
async def test_non_batched_tasks_say_one_batch(tmp_path: Path) -> None:
    from fedloom import FedAvg, TrainingConfig
    from fedloom.pod import ArraySource

    events = PodEvents()
    rng = np.random.default_rng(0)
    pods = {
        "pod-a": ArraySource(rng.normal(size=(40, 4)).astype(np.float32), rng.integers(0, 2, 40))
    }
    task = FedAvg(
        model=ModelSpec("mlp", {"in_features": 4, "hidden": [4], "out_features": 2}),
        rounds=1,
        training=TrainingConfig(epochs=1, batch_size=8),
    )

    async with LocalFederation(pods) as federation:
        federation.modeller.subscribe(events)
        await federation.run(task)

    seen = [(what, fields) for _, what, fields in events.seen]
    assert ("batch_count", {"count": 1}) in seen
    assert not any(what == "batch_started" for what, _ in seen)


def test_a_folder_datasource_from_config(tmp_path: Path) -> None:
    from fedloom.datasources import datasource_from_config
    from fedloom.errors import ConfigError

    _images(tmp_path / "imgs", 3)
    source = datasource_from_config(
        {
            "kind": "folder",
            "path": str(tmp_path / "imgs"),
            "pattern": "*.png",
            "loader_options": {"size": [8, 8]},
        }
    )
    assert isinstance(source, FileSource) and len(source) == 3
    for bad in (
        {"kind": "folder"},
        {"kind": "folder", "path": "x", "colour": "red"},
        {"kind": "folder", "path": "x", "recursive": "yes"},
    ):
        with pytest.raises(ConfigError):
            datasource_from_config(bad)


@pytest.mark.parametrize("isolated", [False, True], ids=["in-process", "child-process"])
@pytest.mark.async_timeout(120)
async def test_csv_report_and_output_images_at_the_pod(tmp_path: Path, isolated: bool) -> None:
    import csv

    from fedloom.algorithms.inference import REPORT_COLUMNS

    folder = tmp_path / "images"
    good = _images(folder, 5, corrupt=1)
    outputs = tmp_path / "outputs"
    task = BatchedInference(MODEL, batch_size=4, report_at_pod=True, output_images="overlay")

    async with LocalFederation(
        {"pod-a": {"default": _source(folder)}},
        isolation=IsolationSettings(heartbeat_interval=1.0) if isolated else None,
    ) as federation:
        federation.pods["pod-a"].outputs = outputs
        run = await federation.run(task)
        await until_idle(federation.pods["pod-a"])

    (task_folder,) = outputs.iterdir()
    assert task_folder.name == run.task_id
    with (task_folder / "report.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == REPORT_COLUMNS
    statuses = {row["file"]: row["status"] for row in rows}
    assert {name for name, status in statuses.items() if status == "ok"} == set(good)
    assert statuses["bad00.png"].startswith("failed: file:")
    images = sorted(path.name for path in (task_folder / "images").iterdir())
    assert images == sorted(good)  # one PNG per good input
    with Image.open(task_folder / "images" / good[0]) as first_image:
        assert first_image.size == (8, 8)


async def test_writing_at_a_pod_without_outputs_is_an_invalid_task(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    _images(folder, 2)
    with pytest.raises(PodResponseError) as info:
        await _run(folder, tmp_path / "p.sqlite", BatchedInference(MODEL, report_at_pod=True))
    assert info.value.failed_pods["pod-a"].startswith("INVALID_TASK")


@pytest.mark.parametrize("isolated", [False, True], ids=["in-process", "child-process"])
@pytest.mark.async_timeout(120)
async def test_pods_that_approve_model_files_run_only_those(tmp_path: Path, isolated: bool) -> None:
    import hashlib

    from safetensors.numpy import save

    from fedloom.algorithms.ml import build_model, state_to_arrays

    folder = tmp_path / "images"
    _images(folder, 3)
    model_file = save(state_to_arrays(build_model(MODEL)))
    digest = hashlib.sha256(model_file).hexdigest()
    isolation = IsolationSettings(heartbeat_interval=1.0) if isolated else None

    async def run(protocol: BatchedInference, approved: set[str]) -> Any:
        policy = PodPolicy(approved_models=frozenset(approved))
        return await _run(
            folder, tmp_path / "p.sqlite", protocol, policy=policy, isolation=isolation
        )

    approved = await run(BatchedInference(MODEL, model_file=model_file), {digest})
    assert len(approved.result.rows["pod-a"]) == 3
    refused = await run(BatchedInference(MODEL, model_file=model_file), {"0" * 64})
    assert refused.aborted["pod-a"].reason is AbortReason.NO_ACCESS
    assert digest in refused.aborted["pod-a"].message
    plain = await run(BatchedInference(MODEL), {digest})  # plain weights: not a file it approved
    assert plain.aborted["pod-a"].reason is AbortReason.NO_ACCESS


@pytest.mark.async_timeout(120)
async def test_a_final_reduce_step_sees_every_batch_and_replaces_the_rows(tmp_path: Path) -> None:
    from fedloom.errors import ConfigError

    folder = tmp_path / "images"
    _images(folder, 7, corrupt=1)
    task = BatchedInference(MODEL, batch_size=3, reduce="class_counts", send_rows=False)
    run = await _run(folder, tmp_path / "p.sqlite", task)
    assert run.result.rows["pod-a"] == []
    reduced = run.result.reduced["pod-a"]
    assert reduced["files"] == 7 and sum(reduced["counts"].values()) == 7
    assert [row["file"] for row in run.result.failures["pod-a"]] == ["bad00.png"]
    with pytest.raises(ConfigError):
        BatchedInference(MODEL, send_rows=False)
    with pytest.raises(Exception, match="no-such"):
        BatchedInference(MODEL, reduce="no-such")
