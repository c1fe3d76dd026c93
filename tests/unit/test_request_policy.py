"""RequestPolicy validation, and the policy applied by ModellerMailbox.collect.

The pods here are WorkerMailboxes on the in-memory hub that each test drives by hand:
they answer, answer late, abort, refuse or stay silent exactly when the test says.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from fedloom import RequestPolicy
from fedloom.errors import AbortReason, ConfigError, ErrorReport, PodResponseError, TaskAbortedError
from fedloom.session import ModellerMailbox, OnTimeout, WorkerMailbox
from fedloom.testing import connect_federation
from fedloom.transport import MemoryHub, TaskRouter
from fedloom.wire import MessageType

# --- RequestPolicy validation -----------------------------------------------------------


def test_defaults() -> None:
    policy = RequestPolicy()
    assert policy.timeout == 30.0
    assert policy.on_timeout is OnTimeout.DISCARD
    assert (policy.stop_on_error, policy.require_all, policy.min_replies) == (False, False, 1)


def test_on_timeout_strings_become_the_enum_and_ints_become_seconds() -> None:
    policy = RequestPolicy(timeout=2, on_timeout="stop")  # type: ignore[arg-type]
    assert policy.on_timeout is OnTimeout.STOP
    assert policy.timeout == 2.0 and isinstance(policy.timeout, float)
    assert RequestPolicy(timeout=None).timeout is None


BAD_VALUES: dict[str, tuple[str, object, str]] = {
    "zero-timeout": ("timeout", 0, "timeout"),
    "negative-timeout": ("timeout", -1.0, "timeout"),
    "nan-timeout": ("timeout", math.nan, "timeout"),
    "infinite-timeout": ("timeout", math.inf, "timeout"),
    "huge-timeout": ("timeout", 1e9, "timeout"),
    "bool-timeout": ("timeout", True, "timeout"),
    "text-timeout": ("timeout", "30", "timeout"),
    "unknown-on-timeout": ("on_timeout", "later", "'discard', 'stop'"),
    "upper-case-on-timeout": ("on_timeout", "STOP", "'discard', 'stop'"),
    "non-text-on-timeout": ("on_timeout", 1, "'discard', 'stop'"),
    "int-stop-on-error": ("stop_on_error", 1, "stop_on_error"),
    "text-require-all": ("require_all", "yes", "require_all"),
    "none-require-all": ("require_all", None, "require_all"),
    "zero-min-replies": ("min_replies", 0, "min_replies"),
    "negative-min-replies": ("min_replies", -2, "min_replies"),
    "float-min-replies": ("min_replies", 1.5, "min_replies"),
    "bool-min-replies": ("min_replies", True, "min_replies"),
    "text-min-replies": ("min_replies", "2", "min_replies"),
}


@pytest.mark.parametrize("case", sorted(BAD_VALUES))
def test_every_bad_value_is_a_config_error(case: str) -> None:
    key, value, hint = BAD_VALUES[case]
    with pytest.raises(ConfigError, match=hint):
        RequestPolicy(**{key: value})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=hint):
        RequestPolicy.from_dict({key: value})


def test_from_dict_round_trips_and_rejects_unknown_keys_and_non_maps() -> None:
    policy = RequestPolicy(
        timeout=1.5, on_timeout=OnTimeout.STOP, stop_on_error=True, require_all=True, min_replies=3
    )
    assert RequestPolicy.from_dict(policy.to_dict()) == policy
    assert RequestPolicy.from_dict({}) == RequestPolicy()
    assert RequestPolicy.from_dict({"on_timeout": "stop"}).on_timeout is OnTimeout.STOP
    with pytest.raises(ConfigError, match=r"unknown request policy key\(s\) \['retries'\]"):
        RequestPolicy.from_dict({"timeout": 1, "retries": 3})
    with pytest.raises(ConfigError, match="must be a map"):
        RequestPolicy.from_dict([("timeout", 1)])  # type: ignore[arg-type]


# --- the policy on a ModellerMailbox ----------------------------------------------------

Scenario = Callable[[ModellerMailbox, dict[str, WorkerMailbox]], Awaitable[None]]


async def run_task(pods: list[str], policy: RequestPolicy | None, scenario: Scenario) -> None:
    """Run ``scenario`` with a modeller mailbox for ``pods`` and each pod's worker end."""
    hub = MemoryHub()
    mailboxes = connect_federation(hub, "modeller", pods)
    modeller_router = TaskRouter(mailboxes["modeller"])
    modeller_router.start()
    modeller = ModellerMailbox(
        modeller_router, modeller_router.open_channel("task"), pods, policy=policy
    )
    workers, routers = {}, [modeller_router]
    for pod in pods:
        router = TaskRouter(mailboxes[pod])
        router.start()
        routers.append(router)
        workers[pod] = WorkerMailbox(router, router.open_channel("task"), "modeller")
    try:
        await scenario(modeller, workers)
    finally:
        for router in routers:
            await router.close()
        await hub.close()


def abort_body(reason: AbortReason = AbortReason.WORKER_ERROR) -> dict[str, str]:
    return ErrorReport(reason, "it broke", "RuntimeError", "").to_body()


async def answer_later(worker: WorkerMailbox, delay: float, body: Any = None) -> None:
    await asyncio.sleep(delay)
    await worker.send(MessageType.RESULTS, body)


@pytest.mark.virtual_time
@pytest.mark.async_timeout(30)
async def test_discard_drops_the_silent_pod_and_goes_on() -> None:
    async def scenario(modeller: ModellerMailbox, workers: dict[str, WorkerMailbox]) -> None:
        await workers["a"].send(MessageType.RESULTS, 1)
        gathered = await modeller.collect(MessageType.RESULTS, name="step")
        assert set(gathered.replies) == {"a"} and gathered.missing == ["b"]
        assert modeller.pods == ["a"] and modeller.dropped == {"b"}
        assert modeller.aborted["b"].reason is AbortReason.WORKER_UNRESPONSIVE
        with pytest.raises(TaskAbortedError) as told:
            await workers["b"].receive(MessageType.INSTRUCTION, timeout=5)
        assert told.value.reason is AbortReason.WORKER_UNRESPONSIVE
        assert "'step'" in told.value.message
        # b's late reply is not taken as an answer to the next request
        await workers["b"].send(MessageType.RESULTS, "late")
        await workers["a"].send(MessageType.RESULTS, 2)
        again = await modeller.collect(MessageType.RESULTS, name="step")
        assert {pod: m.body for pod, m in again.replies.items()} == {"a": 2}
        assert set(modeller.timings["a"]) == {"step", "step#2"}
        assert "b" not in modeller.timings

    await run_task(["a", "b"], RequestPolicy(timeout=0.2), scenario)


@pytest.mark.virtual_time
@pytest.mark.async_timeout(30)
async def test_stop_names_the_late_pod_and_keeps_it_in_the_task() -> None:
    async def scenario(modeller: ModellerMailbox, workers: dict[str, WorkerMailbox]) -> None:
        await workers["a"].send(MessageType.RESULTS)
        with pytest.raises(PodResponseError) as caught:
            await modeller.collect(MessageType.RESULTS, name="step")
        assert set(caught.value.failed_pods) == {"b"}
        assert "no answer within 0.2 s" in caught.value.failed_pods["b"]
        assert "on_timeout='stop'" in str(caught.value)
        # not dropped: the caller aborts the whole task, b included
        assert modeller.pods == ["a", "b"] and not modeller.dropped

    await run_task(["a", "b"], RequestPolicy(timeout=0.2, on_timeout=OnTimeout.STOP), scenario)


@pytest.mark.virtual_time
@pytest.mark.async_timeout(30)
async def test_stop_on_error_returns_at_the_first_abort_without_waiting() -> None:
    async def scenario(modeller: ModellerMailbox, workers: dict[str, WorkerMailbox]) -> None:
        await workers["a"].send(MessageType.TASK_ABORT, abort_body())
        started = asyncio.get_running_loop().time()
        with pytest.raises(PodResponseError) as caught:
            await modeller.collect(MessageType.RESULTS)
        # b never answers and the time-out is 20 s: only stop_on_error ends this early
        assert asyncio.get_running_loop().time() - started == 0
        assert caught.value.failed_pods == {"a": "WORKER_ERROR: it broke"}
        assert "stop_on_error" in str(caught.value)

    await run_task(["a", "b"], RequestPolicy(timeout=20, stop_on_error=True), scenario)


@pytest.mark.virtual_time
@pytest.mark.async_timeout(30)
async def test_without_stop_on_error_an_abort_waits_for_the_others() -> None:
    async def scenario(modeller: ModellerMailbox, workers: dict[str, WorkerMailbox]) -> None:
        await workers["a"].send(MessageType.TASK_ABORT, abort_body())
        late = asyncio.create_task(answer_later(workers["b"], 0.2, "b"))
        gathered = await modeller.collect(MessageType.RESULTS)
        await late
        assert set(gathered.replies) == {"b"} and set(gathered.aborted) == {"a"}
        assert modeller.timings["b"]["request-1"] >= 0.15

    await run_task(["a", "b"], RequestPolicy(timeout=20), scenario)


@pytest.mark.virtual_time
@pytest.mark.async_timeout(30)
async def test_stop_on_error_ignores_a_pod_the_modeller_dropped() -> None:
    async def scenario(modeller: ModellerMailbox, workers: dict[str, WorkerMailbox]) -> None:
        await modeller.drop("b", AbortReason.WORKER_UNRESPONSIVE, "too slow")
        await workers["b"].send(MessageType.TASK_ABORT, abort_body())
        late = asyncio.create_task(answer_later(workers["a"], 0.1))
        gathered = await modeller.collect(MessageType.RESULTS)
        await late
        assert set(gathered.replies) == {"a"}

    await run_task(["a", "b"], RequestPolicy(timeout=20, stop_on_error=True), scenario)


@pytest.mark.virtual_time
@pytest.mark.async_timeout(30)
async def test_require_all_names_the_aborted_and_the_late_pods() -> None:
    async def scenario(modeller: ModellerMailbox, workers: dict[str, WorkerMailbox]) -> None:
        await workers["a"].send(MessageType.RESULTS)
        await workers["b"].send(MessageType.TASK_ABORT, abort_body(AbortReason.NO_DATA))
        with pytest.raises(PodResponseError) as caught:
            await modeller.collect(MessageType.RESULTS)
        assert caught.value.failed_pods == {
            "b": "NO_DATA: it broke",
            "c": "no answer within 0.2 s",
        }
        assert "require_all" in str(caught.value)
        assert modeller.dropped == {"c"}, "late pods are dropped (told) before the task stops"

    await run_task(["a", "b", "c"], RequestPolicy(timeout=0.2, require_all=True), scenario)


@pytest.mark.virtual_time
@pytest.mark.async_timeout(30)
async def test_require_all_counts_a_pod_that_aborted_before_the_request() -> None:
    async def scenario(modeller: ModellerMailbox, workers: dict[str, WorkerMailbox]) -> None:
        await workers["b"].send(MessageType.TASK_ABORT, abort_body())
        await workers["a"].send(MessageType.RESULTS)
        # a raw gather (no policy) reads b's abort: the task knows b left before the request
        first = await modeller.gather(MessageType.RESULTS, ["a"], timeout=5)
        assert set(first.replies) == {"a"} and "b" in modeller.aborted
        await workers["a"].send(MessageType.RESULTS)
        with pytest.raises(PodResponseError) as caught:
            await modeller.collect(MessageType.RESULTS, ["a", "b"])
        assert set(caught.value.failed_pods) == {"b"}

    await run_task(["a", "b"], RequestPolicy(timeout=5, require_all=True), scenario)


@pytest.mark.virtual_time
@pytest.mark.async_timeout(30)
async def test_min_replies() -> None:
    async def scenario(modeller: ModellerMailbox, workers: dict[str, WorkerMailbox]) -> None:
        await workers["a"].send(MessageType.RESULTS)
        await workers["b"].send(MessageType.RESULTS)
        assert len((await modeller.collect(MessageType.RESULTS)).replies) == 2, "c is dropped"
        await workers["a"].send(MessageType.RESULTS)
        with pytest.raises(PodResponseError, match=r"1 usable reply; .* at least 2") as caught:
            await modeller.collect(MessageType.RESULTS)
        assert caught.value.failed_pods["b"] == "no answer within 0.2 s"
        # c, dropped from the first request, is part of why there are too few
        assert caught.value.failed_pods["c"].startswith("WORKER_UNRESPONSIVE: no answer")
        assert modeller.dropped == {"b", "c"}

    await run_task(["a", "b", "c"], RequestPolicy(timeout=0.2, min_replies=2), scenario)


@pytest.mark.virtual_time
@pytest.mark.async_timeout(30)
async def test_refusals_fail_the_request_and_leave_the_task() -> None:
    async def scenario(modeller: ModellerMailbox, workers: dict[str, WorkerMailbox]) -> None:
        await workers["a"].send(MessageType.JOB_ACCEPT)
        await workers["b"].send(MessageType.JOB_REJECT, abort_body(AbortReason.NO_ACCESS))
        gathered = await modeller.collect(
            MessageType.JOB_ACCEPT, name="accept", refusals={MessageType.JOB_REJECT}
        )
        assert gathered.replies["b"].type is MessageType.JOB_REJECT
        assert modeller.pods == ["a"] and "b" not in modeller.aborted
        assert set(modeller.timings) == {"a", "b"}

    await run_task(["a", "b"], RequestPolicy(timeout=5), scenario)


@pytest.mark.virtual_time
@pytest.mark.async_timeout(30)
async def test_a_refusal_under_stop_on_error_stops_at_once() -> None:
    async def scenario(modeller: ModellerMailbox, workers: dict[str, WorkerMailbox]) -> None:
        await workers["b"].send(MessageType.JOB_REJECT, abort_body(AbortReason.NO_ACCESS))
        with pytest.raises(PodResponseError) as caught:
            await modeller.collect(MessageType.JOB_ACCEPT, refusals={MessageType.JOB_REJECT})
        assert caught.value.failed_pods == {"b": "NO_ACCESS: it broke"}
        assert modeller.pods == ["a"], "a has not answered yet: it stays to be told"

    await run_task(["a", "b"], RequestPolicy(timeout=20, stop_on_error=True), scenario)


@pytest.mark.virtual_time
@pytest.mark.async_timeout(30)
async def test_a_requests_own_timeout_wins_over_the_policy() -> None:
    async def scenario(modeller: ModellerMailbox, workers: dict[str, WorkerMailbox]) -> None:
        started = asyncio.get_running_loop().time()
        with pytest.raises(PodResponseError, match="0 usable replies"):
            await modeller.collect(MessageType.RESULTS, timeout=0.2)
        # the policy alone would wait forever
        assert asyncio.get_running_loop().time() - started == pytest.approx(0.2)
        assert modeller.dropped == {"a"}

    await run_task(["a"], RequestPolicy(timeout=None), scenario)


@pytest.mark.virtual_time
@pytest.mark.async_timeout(30)
async def test_without_a_policy_late_pods_are_dropped_and_nothing_is_raised() -> None:
    async def scenario(modeller: ModellerMailbox, workers: dict[str, WorkerMailbox]) -> None:
        await workers["b"].send(MessageType.TASK_ABORT, abort_body())
        gathered = await modeller.collect(MessageType.RESULTS, timeout=0.2)
        assert not gathered.replies and set(gathered.aborted) == {"b"}
        assert gathered.missing == ["a"] and modeller.dropped == {"a"}

    await run_task(["a", "b"], None, scenario)


@pytest.mark.virtual_time
@pytest.mark.async_timeout(30)
async def test_stream_and_progress_ignore_a_dropped_pod() -> None:
    async def scenario(modeller: ModellerMailbox, workers: dict[str, WorkerMailbox]) -> None:
        seen: list[str] = []
        modeller._on_progress = lambda pod, kind, body: seen.append(pod)
        await modeller.drop("b", AbortReason.WORKER_UNRESPONSIVE, "too slow")
        await workers["b"].progress(step=1)
        await workers["b"].send(MessageType.EVALUATION_RESULTS)
        await workers["a"].send(MessageType.EVALUATION_RESULTS)
        streamed = [m.sender async for m in modeller.stream(timeout=0.2)]
        assert streamed == ["a"] and seen == []
        await workers["b"].progress(step=2)
        await workers["a"].send(MessageType.RESULTS)
        assert set((await modeller.collect(MessageType.RESULTS)).replies) == {"a"}
        assert seen == [], "a dropped pod's progress is not reported either"

    await run_task(["a", "b"], RequestPolicy(timeout=1), scenario)


@pytest.mark.virtual_time
@pytest.mark.async_timeout(30)
async def test_a_min_replies_shortfall_says_why_earlier_pods_left_too() -> None:
    async def scenario(modeller: ModellerMailbox, workers: dict[str, WorkerMailbox]) -> None:
        for pod in ("a", "b"):
            await workers[pod].send(MessageType.RESULTS)
        await workers["c"].send(MessageType.TASK_ABORT, abort_body(AbortReason.NO_DATA))
        await modeller.collect(MessageType.RESULTS, name="first")  # 2 usable: enough
        await workers["a"].send(MessageType.RESULTS)
        await workers["b"].send(MessageType.TASK_ABORT, abort_body())
        with pytest.raises(PodResponseError, match="got 1 usable reply") as caught:
            await modeller.collect(MessageType.RESULTS, name="second")
        # c left in the first request; it is part of why the second has too few
        assert caught.value.failed_pods == {
            "b": "WORKER_ERROR: it broke",
            "c": "NO_DATA: it broke",
        }

    await run_task(["a", "b", "c"], RequestPolicy(timeout=20, min_replies=2), scenario)
