"""The request policy over the batched flow's stream (after the ready step).

The modeller side runs against pods on an in-memory hub (no processes): one real worker
over a folder of tiny images, and scripted pods that stream batches at a set pace, go
silent mid-stream (as a pod that was SIGKILLed: no TASK_ABORT ever comes) or abort.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pytest
from PIL import Image

from fedloom import RequestPolicy
from fedloom._hooks import HookSet
from fedloom.datasources import FileRecord, FileSource
from fedloom.errors import (
    AbortReason,
    ErrorReport,
    FedloomError,
    PodResponseError,
    ReceiveTimeoutError,
    TaskAbortedError,
)
from fedloom.protocols import (
    BatchCollector,
    BatchedProtocol,
    BatchOutput,
    BatchWorker,
    ModellerContext,
    WorkerContext,
)
from fedloom.session import ModellerMailbox, OnTimeout, WorkerMailbox
from fedloom.store import FailedFile
from fedloom.testing import connect_federation
from fedloom.transport import MemoryHub, TaskRouter
from fedloom.wire import MessageType

TASK = "task-1"
Script = Callable[[WorkerMailbox], Awaitable[Any]]


@dataclass(frozen=True)
class Names(BatchedProtocol[None, list[str], dict[str, Any]]):
    """Reports each batch's file names; the result is each pod's final list."""

    name = "test_stream_names"

    def to_config(self) -> dict[str, Any]:
        return self.batch_config()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        return cls(**config)

    def collector(self, pods: Sequence[str]) -> BatchCollector[dict[str, Any]]:
        return Finals()

    async def initial_setup(
        self, body: dict[str, Any], tensors: Mapping[str, np.ndarray], worker: BatchWorker
    ) -> None:
        return None

    async def process_batch(
        self, state: None, loaded: list[tuple[FileRecord, Any]], batch_id: int
    ) -> BatchOutput[list[str]]:
        names = [record.name for record, _ in loaded]
        return BatchOutput([record for record, _ in loaded], names, {"names": names})

    async def final_reduce(
        self, state: None, values: list[list[str]], failed: Mapping[str, FailedFile]
    ) -> dict[str, Any]:
        return {"names": sorted(name for batch in values for name in batch)}


@dataclass(frozen=True)
class NamesAtEnd(Names):
    """The same, but nothing leaves the pod before the final reduce step."""

    name = "test_stream_names_at_end"
    releases_per_batch: ClassVar[bool] = False


class Finals(BatchCollector[dict[str, Any]]):
    def __init__(self) -> None:
        self.final: dict[str, list[str]] = {}
        self.batches: dict[str, int] = {}

    def on_batch(self, pod: str, body: dict[str, Any], tensors: Mapping[str, np.ndarray]) -> None:
        self.batches[pod] = self.batches.get(pod, 0) + 1

    def on_finish(self, pod: str, body: dict[str, Any], tensors: Mapping[str, np.ndarray]) -> None:
        self.final[pod] = list(body["names"])

    def result(self, active: Sequence[str], aborted: Mapping[str, str]) -> dict[str, Any]:
        return {"final": self.final, "active": list(active), "aborted": dict(aborted)}


# --- pods -----------------------------------------------------------------------------------


@dataclass
class Told:
    """How a pod's task ended: TASK_COMPLETE ("completed") or the TASK_ABORT's reason."""

    outcome: str
    at: float
    """The loop's clock when the pod heard it."""
    finished_at: float | None = None
    """The loop's clock when the pod sent its last message (a pod that finished)."""


async def told(mailbox: WorkerMailbox, finished_at: float | None = None) -> Told:
    try:
        await mailbox.receive(MessageType.TASK_COMPLETE, timeout=10)
        return Told("completed", asyncio.get_running_loop().time(), finished_at)
    except TaskAbortedError as exc:
        return Told(exc.reason.value, asyncio.get_running_loop().time(), finished_at)


def scripted(
    batches: int, *, gap: float = 0.0, silent_after: int | None = None, abort_after: int = -1
) -> Script:
    """A pod that streams ``batches`` batches ``gap`` seconds apart, in the flow's order.

    ``silent_after``: after that many batches it says nothing more (a killed pod), and only
    waits to hear how the task ended. ``abort_after``: it sends TASK_ABORT instead.
    """

    async def pod(mailbox: WorkerMailbox) -> Told | str:
        await mailbox.send(MessageType.NUM_BATCHES, {"count": -1})
        await mailbox.send(MessageType.CURRENT_BATCH_ID, {"batch": 1})
        await mailbox.send(MessageType.TASK_START, {})
        await mailbox.receive(MessageType.TASK_START, timeout=10)
        await mailbox.receive(MessageType.MODEL_PARAMETERS, timeout=10)
        for batch in range(1, batches + 1):
            if batch - 1 == silent_after:
                return await told(mailbox)
            if batch - 1 == abort_after:
                report = ErrorReport(AbortReason.WORKER_ERROR, "out of disk", "OSError", "")
                await mailbox.send(MessageType.TASK_ABORT, report.to_body())
                return "aborted"
            await asyncio.sleep(gap)
            try:  # a pod stops as soon as the modeller stops the task
                await mailbox.receive(MessageType.TASK_COMPLETE, timeout=0.001)
            except TaskAbortedError as exc:
                return Told(exc.reason.value, asyncio.get_running_loop().time())
            except ReceiveTimeoutError:
                pass
            await mailbox.send(MessageType.EVALUATION_RESULTS, {"batch": batch, "names": []})
            await mailbox.send(MessageType.CURRENT_BATCH_ID, {"batch": batch + 1})
        await mailbox.send(MessageType.BATCHES_COMPLETE, {"stage": "BATCHES_ONLY"})
        finished_at = asyncio.get_running_loop().time()
        names = [f"{batch}.png" for batch in range(1, batches + 1)]
        await mailbox.send(MessageType.BATCHES_COMPLETE, {"stage": "TASK_COMPLETE", "names": names})
        return await told(mailbox, finished_at)

    return pod


def real_worker(protocol: Names, root: Path, count: int) -> Script:
    """The protocol's own worker side over ``count`` tiny images, as a pod runs it."""
    root.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        Image.fromarray(np.full((2, 2, 3), 7, dtype=np.uint8)).save(root / f"f{index}.png")

    async def pod(mailbox: WorkerMailbox) -> Any:
        source = FileSource(root, pattern="*.png")
        context = WorkerContext("pod-a", source, min_rows=1, hooks=HookSet())
        try:
            return await protocol.run_worker(mailbox, context)
        except FedloomError as exc:  # as a pod does: the modeller hears why
            await mailbox.send(MessageType.TASK_ABORT, ErrorReport.from_exception(exc).to_body())
            return exc

    return pod


@dataclass
class Outcome:
    result: Any
    """The modeller side's result, or the FedloomError it raised."""
    pods: dict[str, Any]
    mailbox: ModellerMailbox
    seconds: float
    """How long the modeller side took (the pods may go on a while after it stopped)."""


async def run(protocol: Names, pods: Mapping[str, Script], policy: RequestPolicy | None) -> Outcome:
    """The modeller side of ``protocol`` under ``policy`` against ``pods``, on one hub.

    Its tests run in virtual time (time-outs cost no real time) bounded at 15 s: before
    the fix the stream waited forever for a silent pod.
    """
    hub = MemoryHub()
    routers = {name: TaskRouter(m) for name, m in connect_federation(hub, "modeller", pods).items()}
    for router in routers.values():
        router.start()
    modeller = routers["modeller"]
    mailbox = ModellerMailbox(modeller, modeller.open_channel(TASK), list(pods), policy=policy)

    async def model() -> Any:
        try:
            result = await protocol.run_modeller(mailbox, ModellerContext())
        except FedloomError as exc:
            seconds.append(asyncio.get_running_loop().time() - started)
            await mailbox.broadcast(
                MessageType.TASK_ABORT, ErrorReport.from_exception(exc).to_body()
            )
            return exc
        seconds.append(asyncio.get_running_loop().time() - started)
        await mailbox.broadcast(MessageType.TASK_COMPLETE)
        return result

    seconds: list[float] = []
    started = asyncio.get_running_loop().time()
    try:
        outcomes = await asyncio.gather(
            model(),
            *(
                script(WorkerMailbox(routers[name], routers[name].open_channel(TASK), "modeller"))
                for name, script in pods.items()
            ),
        )
    finally:
        for router in routers.values():
            await router.close()
        await hub.close()
    pod_outcomes = dict(zip(pods, outcomes[1:], strict=True))
    return Outcome(outcomes[0], pod_outcomes, mailbox, seconds[0])


# --- tests ----------------------------------------------------------------------------------


@pytest.mark.virtual_time
@pytest.mark.async_timeout(15)
async def test_discard_drops_a_pod_that_goes_silent_mid_stream_and_goes_on(tmp_path: Path) -> None:
    protocol = Names(batch_size=2)
    pods = {
        "pod-a": real_worker(protocol, tmp_path / "a", 5),
        "pod-dead": scripted(6, silent_after=2),
    }
    flow = await run(protocol, pods, RequestPolicy(timeout=0.5))
    assert not isinstance(flow.result, FedloomError), flow.result
    assert flow.result["final"] == {"pod-a": [f"f{i}.png" for i in range(5)]}
    assert flow.result["active"] == ["pod-a"]
    assert flow.mailbox.dropped == {"pod-dead"}
    report = flow.mailbox.aborted["pod-dead"]
    assert report.reason is AbortReason.WORKER_UNRESPONSIVE
    assert "'batches'" in report.message and "0.5 s" in report.message
    assert flow.result["aborted"]["pod-dead"].startswith("WORKER_UNRESPONSIVE")
    # the silent pod was told it is out; the other finished normally
    assert flow.pods["pod-dead"].outcome == AbortReason.WORKER_UNRESPONSIVE.value
    assert flow.pods["pod-a"] == {"files": 5, "failed": 0, "batches": 3}
    assert set(flow.mailbox.timings["pod-a"]) == {"ready", "batches"}
    assert set(flow.mailbox.timings["pod-dead"]) == {"ready"}
    assert flow.seconds < 5


@pytest.mark.parametrize("where", ["policy", "protocol"])
@pytest.mark.virtual_time
@pytest.mark.async_timeout(15)
async def test_a_busy_pod_does_not_keep_a_silent_pods_timer_alive(where: str) -> None:
    """The time-out is per pod: a pod that talks all along does not keep a dead one in."""
    protocol = Names(timeout=0.3 if where == "protocol" else None)
    policy = RequestPolicy(timeout=0.3) if where == "policy" else None
    pods = {
        "pod-busy": scripted(25, gap=0.04),  # talks every 40 ms for ~1 s
        "pod-dead": scripted(25, silent_after=1),
    }
    flow = await run(protocol, pods, policy)
    assert not isinstance(flow.result, FedloomError), flow.result
    busy, dead = flow.pods["pod-busy"], flow.pods["pod-dead"]
    assert (busy.outcome, dead.outcome) == ("completed", AbortReason.WORKER_UNRESPONSIVE.value)
    assert dead.at < busy.finished_at, "the dead pod was dropped only once the busy one ended"
    assert flow.result["final"] == {"pod-busy": [f"{b}.png" for b in range(1, 26)]}
    assert flow.mailbox.dropped == {"pod-dead"}


@pytest.mark.virtual_time
@pytest.mark.async_timeout(15)
async def test_stop_names_the_silent_pod_without_waiting_for_the_others() -> None:
    policy = RequestPolicy(timeout=0.3, on_timeout=OnTimeout.STOP)
    pods = {"pod-busy": scripted(60, gap=0.05), "pod-dead": scripted(60, silent_after=1)}
    flow = await run(Names(), pods, policy)
    assert isinstance(flow.result, PodResponseError)
    assert flow.result.failed_pods == {"pod-dead": "no message for 0.3 s"}
    assert "'batches'" in str(flow.result) and "on_timeout='stop'" in str(flow.result)
    # the task stopped long before the busy pod's 3 s of batches were done; it was told
    assert flow.seconds < 2.5
    assert flow.pods["pod-busy"].outcome == AbortReason.WORKER_ERROR.value


@pytest.mark.parametrize(
    ("policy", "match"),
    [
        (RequestPolicy(timeout=0.3, require_all=True), "require_all"),
        (RequestPolicy(timeout=0.3, min_replies=2), "can get at most 1 usable reply"),
    ],
    ids=["require-all", "min-replies"],
)
@pytest.mark.virtual_time
@pytest.mark.async_timeout(15)
async def test_require_all_and_min_replies_stop_once_a_pod_is_dropped(
    policy: RequestPolicy, match: str
) -> None:
    # pod-dead dies before its first batch: it delivered nothing usable
    pods = {"pod-busy": scripted(60, gap=0.05), "pod-dead": scripted(60, silent_after=0)}
    flow = await run(Names(), pods, policy)
    assert isinstance(flow.result, PodResponseError)
    assert match in str(flow.result)
    assert flow.result.failed_pods == {"pod-dead": "no message for 0.3 s"}
    assert flow.mailbox.dropped == {"pod-dead"}
    assert flow.seconds < 2.5


@pytest.mark.parametrize("per_batch", [True, False], ids=["per-batch", "at-end"])
@pytest.mark.virtual_time
@pytest.mark.async_timeout(15)
async def test_batches_that_reached_the_modeller_count_for_min_replies(per_batch: bool) -> None:
    """A pod killed after some batches still gave results when they leave with each batch
    (inference rows): min_replies=1 is met and the task ends with what it sent. When nothing
    leaves before the final reduce step (statistics), it gave nothing: the task stops."""
    protocol = Names() if per_batch else NamesAtEnd()
    flow = await run(
        protocol, {"pod-dead": scripted(10, silent_after=3)}, RequestPolicy(timeout=0.3)
    )
    assert flow.mailbox.dropped == {"pod-dead"}
    if per_batch:
        assert not isinstance(flow.result, FedloomError), flow.result
        assert flow.result["final"] == {} and list(flow.result["aborted"]) == ["pod-dead"]
        return
    assert isinstance(flow.result, PodResponseError)
    assert "got 0 usable replies" in str(flow.result)
    assert flow.result.failed_pods == {"pod-dead": "no message for 0.3 s"}


@pytest.mark.virtual_time
@pytest.mark.async_timeout(15)
async def test_stop_on_error_stops_at_the_first_abort_mid_stream() -> None:
    pods = {"pod-busy": scripted(60, gap=0.05), "pod-crash": scripted(60, abort_after=2)}
    flow = await run(Names(), pods, RequestPolicy(timeout=5.0, stop_on_error=True))
    assert isinstance(flow.result, PodResponseError)
    assert flow.result.failed_pods == {"pod-crash": "WORKER_ERROR: out of disk"}
    assert "stop_on_error" in str(flow.result)
    assert flow.seconds < 2.5


@pytest.mark.virtual_time
@pytest.mark.async_timeout(15)
async def test_without_stop_on_error_an_abort_leaves_the_others_going() -> None:
    pods = {"pod-busy": scripted(10, gap=0.02), "pod-crash": scripted(10, abort_after=2)}
    flow = await run(Names(), pods, RequestPolicy(timeout=5.0))
    assert not isinstance(flow.result, FedloomError), flow.result
    assert list(flow.result["final"]) == ["pod-busy"]
    assert flow.result["aborted"] == {"pod-crash": "WORKER_ERROR: out of disk"}
    assert flow.mailbox.dropped == set()
