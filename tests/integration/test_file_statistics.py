"""Federated per-channel statistics over real PNG folders, some files corrupt, on real pods."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from fedloom import LocalFederation
from fedloom.datasources import FileSource
from fedloom.errors import AbortReason, PodResponseError
from fedloom.pod import PodPolicy, SqlitePodStore
from fedloom.protocols import ChannelStatistics, FileStatistics, FileStatisticsResult
from fedloom.worker import IsolationSettings

from .conftest import until_idle
from .pod_events import PodEvents


def _images(folder: Path, count: int, corrupt: int = 0, start: int = 0) -> list[Path]:
    """``count`` random RGB PNGs of varying sizes (and ``corrupt`` files that are not)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    paths = []
    for index in range(start, start + count):
        shape = (4 + index % 3, 5 + index % 4, 3)
        path = folder / f"img{index:04d}.png"
        Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8)).save(path)
        paths.append(path)
    for index in range(corrupt):
        (folder / f"bad{index:02d}.png").write_bytes(os.urandom(64))
    return paths


def _expected(paths: list[Path]) -> tuple[np.ndarray, np.ndarray, int]:
    """Mean, std (ddof=0) and count per channel of the pixels, as the image loader reads them."""
    pixels = []
    for path in paths:
        with Image.open(path) as image:
            values = np.asarray(image.convert("RGB"), dtype=np.float32) / np.float32(255.0)
        pixels.append(values.reshape(-1, 3).astype(np.float64))
    every = np.concatenate(pixels)
    return every.mean(axis=0), every.std(axis=0), len(every)


def _check(stats: ChannelStatistics, paths: list[Path]) -> None:
    """``stats`` are numpy's statistics of exactly these files."""
    mean, std, count = _expected(paths)
    assert (stats.files, stats.count) == (len(paths), count)
    assert stats.mean is not None and stats.std is not None
    np.testing.assert_allclose(stats.mean, mean, rtol=1e-9)
    np.testing.assert_allclose(stats.std, std, rtol=1e-9)


def _source(folder: Path) -> FileSource:
    return FileSource(folder, pattern="*.png", loader="image")


async def _run(
    pods: dict[str, Path],
    protocol: FileStatistics,
    stores: dict[str, Path] | None = None,
    **options: Any,
) -> tuple[Any, list[tuple[str, str, dict[str, Any]]]]:
    opened = {pod: SqlitePodStore(path) for pod, path in (stores or {}).items()}
    events = PodEvents()
    try:
        async with LocalFederation(
            {pod: {"default": _source(folder)} for pod, folder in pods.items()},
            pod_stores=opened,
            **options,
        ) as federation:
            federation.modeller.subscribe(events)
            try:
                run = await federation.run(protocol)
            finally:  # the pods record the end of the task a moment after the modeller
                for pod in federation.pods.values():
                    await until_idle(pod)
            return run, events.seen
    finally:
        for store in opened.values():
            store.close()


@pytest.mark.parametrize("isolated", [False, True], ids=["in-process", "child-process"])
@pytest.mark.async_timeout(120)
async def test_pooled_statistics_equal_numpy_on_every_good_file(
    tmp_path: Path, isolated: bool
) -> None:
    good_a = _images(tmp_path / "a", 12, corrupt=2)
    good_b = _images(tmp_path / "b", 11, corrupt=1, start=50)
    isolation = IsolationSettings(heartbeat_interval=1.0) if isolated else None
    task = FileStatistics(batch_size=4)
    run, seen = await _run(
        {"pod-a": tmp_path / "a", "pod-b": tmp_path / "b"}, task, isolation=isolation
    )
    result = run.result
    assert isinstance(result, FileStatisticsResult) and run.aborted == {}
    _check(result.pooled, good_a + good_b)
    _check(result.pods["pod-a"], good_a)
    _check(result.pods["pod-b"], good_b)
    # corrupt files are reported by count only; no file name reaches the modeller
    assert result.failed == {"pod-a": 2, "pod-b": 1}
    assert result.batches == {"pod-a": 4, "pod-b": 3}
    assert "img" not in repr(result) and "bad" not in repr(result)
    assert not any("img" in repr(body) or "bad" in repr(body) for _, _, body in seen)
    assert ("pod-a", "batch_count", {"count": -1}) in seen
    assert run.task_id and task.summarise(result)["failed"] == {"pod-a": 2, "pod-b": 1}


@pytest.mark.async_timeout(120)
async def test_new_data_only_and_the_privacy_threshold(tmp_path: Path) -> None:
    folder = tmp_path / "images"
    first = _images(folder, 6, corrupt=1)
    stores = {"pod-a": tmp_path / "pod.sqlite"}
    new_only = FileStatistics(batch_size=4, run_on_new_data_only=True)

    # 6 usable files under a threshold of 10: nothing is released, nothing recorded
    with pytest.raises(PodResponseError) as info:
        await _run({"pod-a": folder}, new_only, stores)
    assert info.value.failed_pods["pod-a"].startswith("PRIVACY_THRESHOLD")

    # so once enough files are there, a run on new data only covers all of them
    second = _images(folder, 5, start=100)
    run, _ = await _run({"pod-a": folder}, new_only, stores)
    _check(run.result.pooled, first + second)

    # and after that, only the files added since (here: under a lower threshold)
    third = _images(folder, 3, start=200)
    policy = PodPolicy(min_rows=3)
    run, _ = await _run({"pod-a": folder}, new_only, stores, policy=policy)
    _check(run.result.pooled, third)

    # nothing new (the corrupt file is not retried without a forced re-run): 0 files
    run, _ = await _run({"pod-a": folder}, new_only, stores, policy=policy)
    assert run.result.no_new_data == ("pod-a",) and run.result.pooled.files == 0
    # or, if the task asks for it, NO_NEW_DATA
    strict = FileStatistics(batch_size=4, run_on_new_data_only=True, fail_on_no_new_data=True)
    with pytest.raises(PodResponseError) as info:
        await _run({"pod-a": folder}, strict, stores, policy=policy)
    assert info.value.failed_pods["pod-a"].startswith("NO_NEW_DATA")

    with SqlitePodStore(stores["pod-a"]) as store:
        statuses = [(r.status, r.reason) for r in store.task_runs()]
    assert statuses == [
        ("aborted", AbortReason.PRIVACY_THRESHOLD.value),
        ("completed", None),
        ("completed", None),
        ("completed", None),
        ("aborted", AbortReason.NO_NEW_DATA.value),
    ]


@pytest.mark.async_timeout(120)
async def test_one_pod_below_its_threshold_leaves_the_others_pooled(tmp_path: Path) -> None:
    good = _images(tmp_path / "a", 10)
    _images(tmp_path / "b", 2, corrupt=3, start=70)
    run, _ = await _run(
        {"pod-a": tmp_path / "a", "pod-b": tmp_path / "b"}, FileStatistics(batch_size=3)
    )
    assert set(run.result.pods) == {"pod-a"}
    assert run.aborted["pod-b"].reason is AbortReason.PRIVACY_THRESHOLD
    _check(run.result.pooled, good)
