"""Request policies end to end: real hub, pods and modeller, plus scripted pods.

The scripted pods (:class:`FakePod`) stand in where a real pod cannot be made to stay
silent, answer late or abort on demand; the honest pods are real :class:`~fedloom.pod.Pod`s.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedloom import (
    Analytics,
    AnalyticsRequest,
    FedAvg,
    LocalFederation,
    RequestPolicy,
    ResultsOnly,
    TaskResult,
    TrainingConfig,
    run_local,
)
from fedloom.errors import AbortReason, ConfigError, ErrorReport, PodResponseError
from fedloom.plugins import Message, MessageType
from fedloom.pod import ArraySource, MemoryPodStore, PodPolicy, TableSource
from fedloom.session import OnTimeout

from .conftest import TINY_MLP, FakePod, labelled_arrays, labelled_pods, until_idle

SIZES = {"pod-a": 30, "pod-b": 45, "pod-c": 60}
HONEST = sorted(SIZES)
Reply = tuple[MessageType, Any, dict[str, np.ndarray]] | None

PATIENCE = 4.0
"""Seconds a request waits for the silent pod: honest in-process pods answer well within
it even on a loaded 2-core machine (1-2 s dropped honest pods now and then)."""


def honest_pods() -> dict[str, ArraySource]:
    return labelled_pods(SIZES)


def fedavg(**changes: Any) -> FedAvg:
    options: dict[str, Any] = {
        "model": TINY_MLP,
        "rounds": 2,
        "training": TrainingConfig(epochs=1, batch_size=16),
        "seed": 3,
    }
    return FedAvg(**(options | changes))


async def silent(message: Message) -> Reply:
    """Accepts the task, then never answers anything."""
    return None


async def failing(message: Message) -> Reply:
    """Answers the first instruction with TASK_ABORT, as a pod whose worker crashed."""
    report = ErrorReport(AbortReason.WORKER_ERROR, "out of disk", "OSError", "")
    return MessageType.TASK_ABORT, report.to_body(), {}


def slow(
    seconds: float, reply: MessageType, body: Any = None
) -> Callable[[Message], Awaitable[Reply]]:
    async def answer(message: Message) -> Reply:
        await asyncio.sleep(seconds)
        return reply, body, {}

    return answer


async def with_scripted(
    federation: LocalFederation,
    scripted: dict[str, Callable[[Message], Awaitable[Reply]]],
    body: Callable[[dict[str, asyncio.Task[list[MessageType]]]], Coroutine[Any, Any, Any]],
) -> Any:
    """Run ``body`` with a FakePod per ``scripted`` entry; stop the ones still running."""
    tasks = {
        name: asyncio.create_task(
            FakePod(federation.hub.connect(name, "pod", accepts=["modeller"]), answer).run()
        )
        for name, answer in scripted.items()
    }
    try:
        return await body(tasks)
    finally:
        for task in tasks.values():
            if not task.done():
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


# --- on_timeout -------------------------------------------------------------------------


async def test_discard_finishes_fedavg_with_the_others_and_reports_the_silent_pod() -> None:
    policy = RequestPolicy(timeout=PATIENCE)

    async with LocalFederation(honest_pods()) as federation:

        async def body(tasks: dict[str, asyncio.Task[list[MessageType]]]) -> Any:
            run = await federation.modeller.run(fedavg(), [*HONEST, "pod-silent"], policy=policy)
            return run, await tasks["pod-silent"]

        run, silent_saw = await with_scripted(federation, {"pod-silent": silent}, body)

    assert run.accepted == sorted([*HONEST, "pod-silent"])
    assert run.dropped == ["pod-silent"]
    assert run.aborted["pod-silent"].reason is AbortReason.WORKER_UNRESPONSIVE
    assert "'round-0'" in run.aborted["pod-silent"].message
    assert [summary.pods for summary in run.result.history] == [HONEST, HONEST]
    # the silent pod was told it is out, and never asked for round 1
    assert silent_saw[-1] is MessageType.TASK_ABORT
    assert silent_saw.count(MessageType.MODEL_PARAMETERS) == 1
    assert set(run.timings["pod-silent"]) == {"accept"}


async def test_stop_raises_naming_the_silent_pod_and_tells_every_pod() -> None:
    stores = {pod: MemoryPodStore() for pod in HONEST}
    policy = RequestPolicy(timeout=PATIENCE, on_timeout=OnTimeout.STOP)

    async with LocalFederation(honest_pods(), pod_stores=stores) as federation:

        async def body(tasks: dict[str, asyncio.Task[list[MessageType]]]) -> Any:
            with pytest.raises(PodResponseError) as caught:
                await federation.modeller.run(fedavg(), [*HONEST, "pod-silent"], policy=policy)
            for pod in HONEST:
                await until_idle(federation.pods[pod])
            return caught.value, await tasks["pod-silent"]

        error, silent_saw = await with_scripted(federation, {"pod-silent": silent}, body)

    assert error.failed_pods == {"pod-silent": f"no answer within {PATIENCE:g} s"}
    assert "round-0" in str(error) and "pod-silent" in str(error)
    assert silent_saw[-1] is MessageType.TASK_ABORT
    for pod, store in stores.items():
        (task_run,) = store.task_runs()
        assert (task_run.status, task_run.reason) == (
            "aborted",
            AbortReason.CANCELLED_BY_MODELLER.value,
        ), pod


async def test_a_protocols_own_round_timeout_wins_over_the_policy() -> None:
    """The policy waits forever; FedAvg's round_timeout still drops the silent pod."""

    async with LocalFederation(honest_pods()) as federation:

        async def body(tasks: dict[str, asyncio.Task[list[MessageType]]]) -> Any:
            return await federation.modeller.run(
                fedavg(rounds=1, round_timeout=PATIENCE),
                [*HONEST, "pod-silent"],
                policy=RequestPolicy(timeout=None),
            )

        run = await with_scripted(federation, {"pod-silent": silent}, body)

    assert run.dropped == ["pod-silent"]
    assert run.result.history[0].pods == HONEST


async def test_discard_in_analytics_leaves_the_silent_pod_out_of_the_statistics() -> None:
    frames = {pod: pd.DataFrame({"x": np.arange(rows, dtype=float)}) for pod, rows in SIZES.items()}
    request = AnalyticsRequest(statistics=("count", "mean"), columns=("x",))

    pods = {pod: TableSource(frame) for pod, frame in frames.items()}
    async with LocalFederation(pods) as federation:

        async def body(tasks: dict[str, asyncio.Task[list[MessageType]]]) -> Any:
            return await federation.modeller.run(
                Analytics(request=request),
                [*HONEST, "pod-silent"],
                policy=RequestPolicy(timeout=PATIENCE),
            )

        run = await with_scripted(federation, {"pod-silent": silent}, body)

    assert run.dropped == ["pod-silent"]
    assert run.result.pods == HONEST
    assert run.result.excluded == {"pod-silent": "no answer in time"}
    assert run.result.statistics["x"]["count"] == sum(SIZES.values())
    assert all(set(run.timings[pod]) == {"accept", "partials"} for pod in HONEST)


# --- require_all and min_replies --------------------------------------------------------


async def test_require_all_names_the_pod_that_rejects() -> None:
    locked = {"pod-a": PodPolicy(allowed_protocols=frozenset({"analytics"}))}
    stores = {pod: MemoryPodStore() for pod in HONEST}

    async with LocalFederation(honest_pods(), policies=locked, pod_stores=stores) as fed:
        with pytest.raises(PodResponseError) as caught:
            await fed.run(fedavg(), policy=RequestPolicy(require_all=True))
        for pod in HONEST:
            await until_idle(fed.pods[pod])
        # the old keyword still wins over the policy's flag
        run = await fed.run(fedavg(), policy=RequestPolicy(require_all=True), require_all=False)
        error = caught.value

    assert set(error.failed_pods) == {"pod-a"}
    assert error.failed_pods["pod-a"].startswith(AbortReason.NO_ACCESS.value)
    assert "require_all" in str(error)
    # the pods that had accepted were told the task will not start
    for pod in ("pod-b", "pod-c"):
        first = stores[pod].task_runs()[0]
        assert (first.status, first.reason) == ("aborted", AbortReason.CANCELLED_BY_MODELLER.value)
    assert run.rejected["pod-a"].reason is AbortReason.NO_ACCESS
    assert [summary.pods for summary in run.result.history] == [["pod-b", "pod-c"]] * 2


@pytest.mark.parametrize("require_all", [False, True], ids=["best-effort", "require-all"])
async def test_a_pod_that_aborts_mid_task(require_all: bool) -> None:
    policy = RequestPolicy(timeout=5.0, require_all=require_all)

    async def with_a_failing_pod() -> TaskResult:
        async with LocalFederation(honest_pods()) as federation:

            async def body(tasks: dict[str, asyncio.Task[list[MessageType]]]) -> Any:
                return await federation.modeller.run(
                    fedavg(), [*HONEST, "pod-failing"], policy=policy
                )

            return await with_scripted(federation, {"pod-failing": failing}, body)

    if require_all:
        with pytest.raises(PodResponseError) as caught:
            await with_a_failing_pod()
        assert caught.value.failed_pods == {"pod-failing": "WORKER_ERROR: out of disk"}
        return
    run = await with_a_failing_pod()
    assert run.aborted["pod-failing"].reason is AbortReason.WORKER_ERROR
    assert run.dropped == []
    assert [summary.pods for summary in run.result.history] == [HONEST, HONEST]


async def test_min_replies() -> None:
    async def with_a_silent_pod(min_replies: int) -> TaskResult:
        async with LocalFederation(honest_pods()) as federation:

            async def body(tasks: dict[str, asyncio.Task[list[MessageType]]]) -> Any:
                return await federation.modeller.run(
                    fedavg(rounds=1),
                    [*HONEST, "pod-silent"],
                    policy=RequestPolicy(timeout=PATIENCE, min_replies=min_replies),
                )

            return await with_scripted(federation, {"pod-silent": silent}, body)

    with pytest.raises(PodResponseError, match=r"3 usable replies; .* at least 4") as caught:
        await with_a_silent_pod(4)
    assert caught.value.failed_pods == {"pod-silent": f"no answer within {PATIENCE:g} s"}
    assert (await with_a_silent_pod(3)).result.history[0].pods == HONEST


# --- stop_on_error ----------------------------------------------------------------------


async def test_stop_on_error_does_not_wait_for_a_slow_pod() -> None:
    policy = RequestPolicy(timeout=30.0, stop_on_error=True)
    scripted = {
        "pod-failing": failing,
        # would answer long after the test's own limit: only stop_on_error ends the round
        "pod-slow": slow(120.0, MessageType.TRAINING_UPDATE),
    }

    async with LocalFederation(honest_pods()) as federation:

        async def body(tasks: dict[str, asyncio.Task[list[MessageType]]]) -> Any:
            started = time.monotonic()
            with pytest.raises(PodResponseError) as caught:
                await federation.modeller.run(fedavg(), [*HONEST, *sorted(scripted)], policy=policy)
            return caught.value, time.monotonic() - started

        error, seconds = await with_scripted(federation, scripted, body)

    assert error.failed_pods == {"pod-failing": "WORKER_ERROR: out of disk"}
    assert "stop_on_error" in str(error)
    assert seconds < 20, "it waited for the slow pod"


# --- timings ----------------------------------------------------------------------------


def test_timings_are_recorded_per_pod_and_per_request() -> None:
    run = run_local(fedavg(), honest_pods(), request_policy=RequestPolicy(timeout=10.0))
    assert set(run.timings) == set(HONEST)
    for pod in HONEST:
        assert list(run.timings[pod]) == ["accept", "round-0", "round-1"]
        assert all(seconds >= 0 for seconds in run.timings[pod].values())
        assert run.accept_seconds[pod] == run.timings[pod]["accept"]
        for summary in run.result.history:
            name = f"round-{summary.round_index}"
            assert summary.per_pod[pod]["seconds"] == run.timings[pod][name]


async def test_timings_measure_a_late_pod() -> None:
    data = {pod: ArraySource(*labelled_arrays(rows, seed=1)) for pod, rows in SIZES.items()}

    async with LocalFederation(data) as federation:
        late = FakePod(
            federation.hub.connect("pod-late", "pod", accepts=["modeller"]),
            slow(0.3, MessageType.RESULTS, {"rows": 12}),
            accept_delay=0.2,
        )
        late_task = asyncio.create_task(late.run())
        run = await federation.modeller.run(
            ResultsOnly("dataset_summary"),
            [*HONEST, "pod-late"],
            policy=RequestPolicy(timeout=10.0, require_all=True),
        )
        await late_task

    assert run.timings["pod-late"]["accept"] >= 0.15
    assert run.timings["pod-late"]["results"] >= 0.25
    assert run.result["pod-late"].seconds == run.timings["pod-late"]["results"]
    assert set(run.timings) == {*HONEST, "pod-late"}


# --- run_local --------------------------------------------------------------------------


def test_run_local_takes_the_request_policy_as_request_policy() -> None:
    locked = {"pod-a": PodPolicy(allowed_protocols=frozenset({"analytics"}))}
    task = ResultsOnly("dataset_summary")
    best_effort = run_local(task, honest_pods(), policies=locked, request_policy=RequestPolicy())
    assert sorted(best_effort.result) == ["pod-b", "pod-c"]
    with pytest.raises(ConfigError, match="request_policy="):
        run_local(task, honest_pods(), policy=RequestPolicy())
