"""Federated analytics end to end: the combined statistics equal the central ones."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedloom import Analytics, AnalyticsRequest, AnalyticsResult, LocalFederation, run_local
from fedloom.algorithms._analytics import compute_partials, partials_to_wire
from fedloom.errors import AbortReason, ConfigError, PodResponseError
from fedloom.plugins import Message, MessageType, load_protocol
from fedloom.pod import MemoryPodStore, PodPolicy, TableSource

from .conftest import RAW, FakePod, RawClient, until_idle

SIZES = {"pod-a": 37, "pod-b": 120, "pod-c": 253}
COLUMNS = ("normal", "skewed", "counts")
MOMENTS = ("count", "sum", "mean", "var", "std", "min", "max")
QUANTILES = (0.05, 0.25, 0.5, 0.9, 1.0)
REL = 1e-9


def make_frame(rows: int, seed: int) -> pd.DataFrame:
    """Three numeric columns of different shapes; a few missing values in one of them."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "normal": rng.normal(loc=3.0 * seed - 2.0, scale=1.0 + seed, size=rows),
            "skewed": rng.lognormal(mean=0.5, sigma=1.2, size=rows),
            "counts": rng.integers(-5, 40, size=rows),
            "text": [f"row-{i}" for i in range(rows)],
        }
    )
    frame.loc[frame.index[::9], "normal"] = np.nan
    return frame


FRAMES = {pod: make_frame(rows, seed=i) for i, (pod, rows) in enumerate(SIZES.items())}


def pods_from(frames: dict[str, pd.DataFrame]) -> dict[str, TableSource]:
    return {pod: TableSource(frame) for pod, frame in frames.items()}


def central(frames: list[pd.DataFrame], column: str) -> np.ndarray:
    """Every non-missing value of ``column`` over the concatenated frames."""
    values = pd.concat(frames, ignore_index=True)[column].dropna().to_numpy(dtype=np.float64)
    assert len(values) > 0
    return values


def close(got: Any, want: float) -> bool:
    return isinstance(got, float) and math.isclose(got, want, rel_tol=REL, abs_tol=1e-12)


def check_moments(stats: dict[str, Any], values: np.ndarray, wanted: tuple[str, ...]) -> None:
    series = pd.Series(values)
    expected = {
        "sum": float(series.sum()),
        "mean": float(series.mean()),
        "var": float(series.var(ddof=1)),
        "std": float(series.std(ddof=1)),
        "min": float(series.min()),
        "max": float(series.max()),
    }
    for name in wanted:
        if name == "count":
            assert stats["count"] == len(values) and isinstance(stats["count"], int)
        elif name in expected:
            assert close(stats[name], expected[name]), (name, stats[name], expected[name])


def check_histogram(
    histogram: dict[str, list[float]], values: np.ndarray, bins: int, low: float, high: float
) -> None:
    edges = np.linspace(low, high, bins + 1)
    counts, _ = np.histogram(values, bins=edges)
    assert len(histogram["edges"]) == bins + 1
    assert np.allclose(histogram["edges"], edges, rtol=REL, atol=0)
    assert histogram["counts"] == [int(c) for c in counts]
    assert sum(histogram["counts"]) == len(values)


def check_quantiles(quantiles: dict[str, float], values: np.ndarray, accuracy: float) -> None:
    """The sketch's bound: |v - x_r| <= accuracy * |x_r|, r = floor(q * (n - 1))."""
    ordered = np.sort(values)
    assert set(quantiles) == {repr(float(q)) for q in QUANTILES}
    for q in QUANTILES:
        exact = ordered[math.floor(q * (len(ordered) - 1))]
        got = quantiles[repr(float(q))]
        slack = 1e-12 * abs(exact) + 1e-12
        assert abs(got - exact) <= accuracy * abs(exact) + slack, (q, got, exact)


def analytics(**changes: Any) -> Analytics:
    request: dict[str, Any] = {
        "statistics": (*MOMENTS, "histogram", "quantiles"),
        "columns": COLUMNS,
        "quantiles": QUANTILES,
        "histogram_bins": 7,
    }
    require_all = changes.pop("require_all", False)
    return Analytics(request=AnalyticsRequest(**(request | changes)), require_all=require_all)


def check_everything(result: AnalyticsResult, frames: list[pd.DataFrame], bins: int = 7) -> None:
    """``result`` of :func:`analytics` equals the central statistics of ``frames``."""
    accuracy = analytics().request.sketch_accuracy
    assert 0 < accuracy <= 0.01
    assert set(result.statistics) == set(COLUMNS)
    for column in COLUMNS:
        values = central(frames, column)
        stats = result.statistics[column]
        assert set(stats) == {*MOMENTS, "histogram", "quantiles"}
        check_moments(stats, values, MOMENTS)
        check_histogram(stats["histogram"], values, bins, values.min(), values.max())
        check_quantiles(stats["quantiles"], values, accuracy)


def test_statistics_equal_the_central_ones() -> None:
    run = run_local(analytics(), pods_from(FRAMES))
    result = run.result
    assert isinstance(result, AnalyticsResult)
    assert result.pods == sorted(SIZES) and result.excluded == {}
    check_everything(result, list(FRAMES.values()))


def test_a_coarser_sketch_keeps_its_own_bound() -> None:
    run = run_local(analytics(sketch_accuracy=0.05, statistics=("quantiles",)), pods_from(FRAMES))
    for column in COLUMNS:
        check_quantiles(
            run.result.statistics[column]["quantiles"], central(list(FRAMES.values()), column), 0.05
        )


def test_per_column_requests_work_end_to_end() -> None:
    request = AnalyticsRequest(
        per_column={
            "normal": ("count", "mean", "std"),
            "skewed": ("max", "quantiles"),
            "counts": ("histogram", "min"),
        },
        quantiles=QUANTILES,
        histogram_bins=5,
        histogram_range={"counts": (-10.0, 50.0)},  # given: no min/max pre-round
    )
    result = run_local(Analytics(request=request), pods_from(FRAMES)).result
    frames = list(FRAMES.values())
    assert {c: set(s) for c, s in result.statistics.items()} == {
        "normal": {"count", "mean", "std"},
        "skewed": {"max", "quantiles"},
        "counts": {"histogram", "min"},
    }
    check_moments(result.statistics["normal"], central(frames, "normal"), ("count", "mean", "std"))
    check_moments(result.statistics["skewed"], central(frames, "skewed"), ("max",))
    check_quantiles(
        result.statistics["skewed"]["quantiles"], central(frames, "skewed"), request.sketch_accuracy
    )
    counts = central(frames, "counts")
    check_moments(result.statistics["counts"], counts, ("min",))
    check_histogram(result.statistics["counts"]["histogram"], counts, 5, -10.0, 50.0)


async def test_statistics_and_per_column_together_fail_before_anything_is_sent() -> None:
    stores = {pod: MemoryPodStore() for pod in SIZES}

    async with LocalFederation(pods_from(FRAMES), pod_stores=stores) as federation:
        with pytest.raises(ConfigError, match="not both"):
            AnalyticsRequest(statistics=("mean",), per_column={"normal": ("mean",)})
        with pytest.raises(ConfigError, match="not both"):
            load_protocol(
                {
                    "protocol": "analytics",
                    "config": {
                        "request": {"statistics": ["mean"], "per_column": {"normal": ["max"]}}
                    },
                }
            )
        assert federation.hub.statistics().messages == 0

    assert all(store.task_runs() == [] for store in stores.values())


async def test_a_pod_rejects_a_raw_request_with_statistics_and_per_column() -> None:
    spec = {
        "protocol": "analytics",
        "config": {"request": {"statistics": ["mean"], "per_column": {"normal": ["max"]}}},
    }

    async with LocalFederation(pods_from(FRAMES), guests=[RAW]) as federation:
        reply = await RawClient(federation.hub).request(
            "pod-a", {"task": spec, "dataset": "default"}
        )

    assert reply.type is MessageType.JOB_REJECT
    assert reply.body["reason"] == AbortReason.INVALID_TASK.value


# --- privacy threshold ------------------------------------------------------------------

SMALL = make_frame(15, seed=7)


def test_a_pod_under_its_row_threshold_is_left_out() -> None:
    pods = pods_from(FRAMES) | {"pod-small": TableSource(SMALL)}
    stores = {"pod-small": MemoryPodStore()}
    run = run_local(
        analytics(),
        pods,
        policies={"pod-small": PodPolicy(min_rows=20)},
        pod_stores=stores,
    )
    result = run.result
    assert result.pods == sorted(SIZES)
    assert set(result.excluded) == {"pod-small"}
    assert result.excluded["pod-small"].startswith(AbortReason.PRIVACY_THRESHOLD.value)
    assert run.aborted["pod-small"].reason is AbortReason.PRIVACY_THRESHOLD
    # exactly the central statistics of the other pods (edges from their range only)
    check_everything(result, list(FRAMES.values()))
    (task_run,) = stores["pod-small"].task_runs()
    assert (task_run.status, task_run.reason) == ("aborted", AbortReason.PRIVACY_THRESHOLD.value)


def test_the_same_pod_passes_a_lower_threshold() -> None:
    """The exclusion above is the policy's doing: with min_rows=15 the pod contributes."""
    pods = pods_from(FRAMES) | {"pod-small": TableSource(SMALL)}
    run = run_local(analytics(), pods, policies={"pod-small": PodPolicy(min_rows=13)})
    assert run.result.excluded == {}
    check_everything(run.result, [*FRAMES.values(), SMALL])


def test_require_all_fails_naming_the_pod_under_its_threshold() -> None:
    pods = pods_from(FRAMES) | {"pod-small": TableSource(SMALL)}
    with pytest.raises(PodResponseError) as caught:
        run_local(analytics(require_all=True), pods, policies={"pod-small": PodPolicy(min_rows=20)})
    assert set(caught.value.failed_pods) == {"pod-small"}
    assert caught.value.failed_pods["pod-small"].startswith(AbortReason.PRIVACY_THRESHOLD.value)
    assert "pod-small" in str(caught.value)


# --- missing columns and empty datasets -------------------------------------------------


def test_a_column_no_pod_has_fails_with_incompatible_datasource() -> None:
    with pytest.raises(PodResponseError) as caught:
        run_local(analytics(columns=("normal", "no_such_column")), pods_from(FRAMES))
    failed = caught.value.failed_pods
    assert set(failed) == set(SIZES)
    for reason in failed.values():
        assert reason.startswith(AbortReason.INCOMPATIBLE_DATASOURCE.value), reason
        assert "no_such_column" in reason


def _header_only_csv(tmp_path: Path) -> Path:
    path = tmp_path / "empty.csv"
    path.write_text("normal,skewed,counts,text\n")
    return path


def test_an_empty_dataset_is_reported_as_no_data(tmp_path: Path) -> None:
    """Accepted (the pod checks data lazily), then TASK_ABORT with reason NO_DATA."""
    pods = pods_from(FRAMES) | {"pod-empty": TableSource(_header_only_csv(tmp_path))}
    store = MemoryPodStore()
    run = run_local(analytics(), pods, pod_stores={"pod-empty": store})
    assert "pod-empty" not in run.rejected
    assert run.aborted["pod-empty"].reason is AbortReason.NO_DATA
    assert run.aborted["pod-empty"].exception_type == "EmptyDatasetError"
    assert "no rows" in run.aborted["pod-empty"].message
    assert run.result.excluded["pod-empty"].startswith(AbortReason.NO_DATA.value)
    check_everything(run.result, list(FRAMES.values()))
    (task_run,) = store.task_runs()
    assert (task_run.status, task_run.reason) == ("aborted", AbortReason.NO_DATA.value)


def test_an_empty_dataset_alone_fails_the_task(tmp_path: Path) -> None:
    with pytest.raises(PodResponseError) as caught:
        run_local(analytics(), {"pod-empty": TableSource(_header_only_csv(tmp_path))})
    assert caught.value.failed_pods["pod-empty"].startswith(AbortReason.NO_DATA.value)


def _late_pod(frame: pd.DataFrame, request: AnalyticsRequest) -> Any:
    """A pod that answers like a real one, but accepts only after a short delay."""

    async def answer(message: Message) -> Any:
        if message.type is not MessageType.INSTRUCTION:
            return None
        assert message.body == {"step": "partials"}, message.body
        partials = compute_partials(frame, request, edges={}, min_rows=10)
        body, tensors = partials_to_wire(partials)
        return MessageType.RESULTS, body, tensors

    return answer


@pytest.mark.parametrize("require_all", [False, True], ids=["best-effort", "require-all"])
async def test_a_pod_that_aborts_while_others_still_accept_is_not_forgotten(
    tmp_path: Path, require_all: bool
) -> None:
    """pod-empty accepts and aborts (NO_DATA) while the modeller still waits for the
    late pod's JOB_ACCEPT; the analytics result must still account for it."""
    request = AnalyticsRequest(statistics=("count", "mean"), columns=("normal",))
    pods = pods_from(FRAMES) | {"pod-empty": TableSource(_header_only_csv(tmp_path))}
    late_frame = make_frame(30, seed=11)

    async def with_a_late_pod() -> Any:
        async with LocalFederation(pods) as federation:
            late = FakePod(
                federation.hub.connect("pod-late", "pod", accepts=["modeller"]),
                _late_pod(late_frame, request),
                accept_delay=0.3,
            )
            late_task = asyncio.create_task(late.run())
            try:
                return await federation.modeller.run(
                    Analytics(request=request, require_all=require_all),
                    [*sorted(pods), "pod-late"],
                )
            finally:
                await late_task
                await until_idle(federation.pods["pod-empty"])

    if require_all:
        with pytest.raises(PodResponseError) as caught:
            await with_a_late_pod()
        assert caught.value.failed_pods["pod-empty"].startswith(AbortReason.NO_DATA.value)
        return
    run = await with_a_late_pod()
    assert run.aborted["pod-empty"].reason is AbortReason.NO_DATA
    assert run.result.pods == sorted([*SIZES, "pod-late"])
    assert run.result.excluded["pod-empty"].startswith(AbortReason.NO_DATA.value)
    check_moments(
        run.result.statistics["normal"],
        central([*FRAMES.values(), late_frame], "normal"),
        ("count", "mean"),
    )
