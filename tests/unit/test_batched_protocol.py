"""The batched-protocol base: selection, batches, resilience, stops, setup and final reduce.

Each test runs a small protocol's modeller side and worker side against each other over a
real in-memory hub (no processes); the worker's errors become TASK_ABORT as on a pod. The
protocol decides by file name: ``poison`` spoils any batch it is in with other files,
``broken`` fails even alone, ``skip`` is a file the protocol itself cannot use; files named
``corrupt`` are not images, so they fail to load.
"""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pytest
from PIL import Image

from fedloom._hooks import Hook, HookEvent, HookPoint, HookSet
from fedloom.datasources import ArraySource, Datasource, FileRecord, FileSource
from fedloom.errors import (
    AbortReason,
    ConfigError,
    DataError,
    EmptyDatasetError,
    ErrorReport,
    FedloomError,
    LimitsExceededError,
    NoNewDataError,
    PrivacyThresholdError,
    ProtocolError,
    SchemaMismatchError,
    TooManyFailuresError,
)
from fedloom.protocols import (
    BatchCollector,
    BatchedInference,
    BatchedProtocol,
    BatchOutput,
    BatchWorker,
    ChannelStatistics,
    FileStatistics,
    ModellerContext,
    SetupValues,
    StoreLedger,
    WorkerContext,
    load_protocol,
    pool_statistics,
)
from fedloom.session import ModellerMailbox, WorkerMailbox
from fedloom.store import FailedFile, MemoryPodStore, task_hash
from fedloom.testing import connect_federation
from fedloom.transport import MemoryHub, TaskRouter
from fedloom.wire import MessageType

TASK = "task-1"


# --- a small batched protocol -------------------------------------------------------------


@dataclass
class Seen:
    """The worker's state: what the setup step brought."""

    greeting: str
    weights: float


@dataclass(frozen=True)
class Names(BatchedProtocol[Seen, list[str], dict[str, Any]]):
    """Processes files by name (see the module docstring); reduces to the sorted names."""

    name = "test_names"

    stop_at: int = 0
    """End the task after this batch (0: never)."""
    refuse: bool = False
    """The final reduce step refuses to release anything."""

    def to_config(self) -> dict[str, Any]:
        return {"stop_at": self.stop_at, "refuse": self.refuse, **self.batch_config()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        return cls(**config)

    def setup_values(self) -> SetupValues:
        return SetupValues({"greeting": "hello"}, {"w": np.arange(4, dtype=np.float32)})

    def collector(self, pods: Sequence[str]) -> BatchCollector[dict[str, Any]]:
        return NamesCollector()

    async def initial_setup(
        self, body: dict[str, Any], tensors: Mapping[str, np.ndarray], worker: BatchWorker
    ) -> Seen:
        return Seen(str(body["greeting"]), float(tensors["w"].sum()))

    async def process_batch(
        self, state: Seen, loaded: list[tuple[FileRecord, Any]], batch_id: int
    ) -> BatchOutput[list[str]]:
        names = [record.name for record, _ in loaded]
        if any("broken" in name for name in names):
            raise ValueError("a broken file")
        if len(names) > 1 and any("poison" in name for name in names):
            raise RuntimeError("a poisoned batch")
        skipped: dict[str, BaseException] = {
            name: DataError("cannot use it") for name in names if "skip" in name
        }
        done = [record for record, _ in loaded if record.name not in skipped]
        stop = LimitsExceededError("stopped on purpose") if batch_id == self.stop_at else None
        body = {"names": [record.name for record in done]}
        return BatchOutput(done, body["names"], body, failed=skipped, stop=stop)

    async def final_reduce(
        self, state: Seen, values: list[list[str]], failed: Mapping[str, FailedFile]
    ) -> dict[str, Any]:
        if self.refuse:
            raise PrivacyThresholdError("refused on purpose")
        return {
            "names": sorted(name for batch in values for name in batch),
            "batches": len(values),
            "failed": {name: failure.level for name, failure in sorted(failed.items())},
            "setup": [state.greeting, state.weights],
        }


@dataclass(frozen=True)
class NamesAtEnd(Names):
    """The same, but nothing leaves the pod before the final reduce step."""

    name = "test_names_at_end"
    releases_per_batch: ClassVar[bool] = False


class NamesCollector(BatchCollector[dict[str, Any]]):
    def __init__(self) -> None:
        self.batches: list[tuple[str, int, list[str]]] = []
        self.final: dict[str, dict[str, Any]] = {}
        self.no_new_data: list[str] = []

    def on_batch(self, pod: str, body: dict[str, Any], tensors: Mapping[str, np.ndarray]) -> None:
        self.batches.append((pod, body["batch"], list(body["names"])))

    def on_finish(self, pod: str, body: dict[str, Any], tensors: Mapping[str, np.ndarray]) -> None:
        if not isinstance(body.get("names"), list):
            raise ProtocolError("names must be a list")
        self.final[pod] = body

    def on_no_new_data(self, pod: str) -> None:
        self.no_new_data.append(pod)

    def result(self, active: Sequence[str], aborted: Mapping[str, str]) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "final": self.final,
            "aborted": dict(aborted),
            "no_new_data": sorted(self.no_new_data),
            "active": sorted(active),
        }


class Recorder(Hook):
    def __init__(self) -> None:
        self.events: list[HookEvent] = []

    def __call__(self, event: HookEvent, mailbox: WorkerMailbox) -> None:
        self.events.append(event)


# --- running both sides -------------------------------------------------------------------

RawPod = Callable[[WorkerMailbox], Awaitable[None]]


@dataclass
class Flow:
    result: Any
    """The modeller side's result, or the FedloomError it raised."""
    workers: dict[str, Any]
    """Each pod's released record, or the FedloomError its worker side raised."""
    status: list[tuple[str, MessageType, dict[str, Any]]] = field(default_factory=list)


async def run_flow(
    protocol: BatchedProtocol[Any, Any, Any],
    sources: Mapping[str, Datasource],
    *,
    ledger: StoreLedger | None = None,
    hooks: HookSet | None = None,
    raw: Mapping[str, RawPod] | None = None,
) -> Flow:
    """Both sides of ``protocol`` for one task, as a modeller and its pods run them."""
    raw = raw or {}

    hub = MemoryHub()
    mailboxes = connect_federation(hub, "modeller", [*sources, *raw])
    routers = [TaskRouter(m) for m in mailboxes.values()]
    for router in routers:
        router.start()
    flow = Flow(None, {})
    modeller = ModellerMailbox(
        routers[0],
        routers[0].open_channel(TASK),
        [*sources, *raw],
        on_progress=lambda pod, kind, body: flow.status.append((pod, kind, dict(body))),
    )

    async def model() -> Any:
        try:
            result = await protocol.run_modeller(modeller, ModellerContext())
        except FedloomError as exc:
            report = ErrorReport.from_exception(exc).to_body()
            await modeller.broadcast(MessageType.TASK_ABORT, report)
            return exc
        await modeller.broadcast(MessageType.TASK_COMPLETE)
        return result

    async def work(name: str, router: TaskRouter, source: Datasource) -> Any:
        mailbox = WorkerMailbox(router, router.open_channel(TASK), "modeller")
        context = WorkerContext(name, source, min_rows=1, hooks=hooks or HookSet(), ledger=ledger)
        try:
            return await protocol.run_worker(mailbox, context)
        except FedloomError as exc:  # as a pod does: the modeller hears why
            await mailbox.send(MessageType.TASK_ABORT, ErrorReport.from_exception(exc).to_body())
            return exc

    async def scripted(router: TaskRouter, script: RawPod) -> None:
        await script(WorkerMailbox(router, router.open_channel(TASK), "modeller"))

    try:
        pods = list(sources.items())
        outcomes = await asyncio.gather(
            model(),
            *(work(name, routers[1 + i], source) for i, (name, source) in enumerate(pods)),
            *(scripted(routers[1 + len(pods) + i], s) for i, s in enumerate(raw.values())),
        )
    finally:
        for router in routers:
            await router.close()
        await hub.close()
    flow.result = outcomes[0]
    flow.workers = dict(zip(sources, outcomes[1 : 1 + len(sources)], strict=True))
    return flow


def folder(root: Path, names: Sequence[str]) -> FileSource:
    """A folder with a tiny PNG per name (garbage bytes for names with ``corrupt``)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in names:
        if "corrupt" in name:
            (root / name).write_bytes(b"not an image")
        else:
            Image.fromarray(np.full((2, 2, 3), 7, dtype=np.uint8)).save(root / name)
    return FileSource(root, pattern="*.png")


def kinds(flow: Flow, kind: MessageType) -> list[Any]:
    key = "count" if kind is MessageType.NUM_BATCHES else "batch"
    return [body[key] for _, seen, body in flow.status if seen is kind]


# --- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"batch_size": 0},
        {"batch_size": True},
        {"batch_size": 2.0},
        {"max_consecutive_batch_failures": 0},
        {"max_consecutive_batch_failures": -2},
        {"max_consecutive_batch_failures": True},
        {"resilience": False, "force_rerun_failed_files": True},
        {"fail_on_no_new_data": True},
        {"run_on_new_data_only": True, "fail_on_no_new_data": 1},
        {"test_run": "yes"},
        {"resilience": 1},
        {"timeout": -1.0},
    ],
)
def test_bad_batching_settings_are_config_errors(settings: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"test_names|force_rerun"):
        Names(**settings)


def test_defaults_and_unlimited_failures() -> None:
    protocol = Names(max_consecutive_batch_failures=-1)
    assert (protocol.batch_size, protocol.max_consecutive_batch_failures) == (32, -1)
    assert Names().max_consecutive_batch_failures == 5 and Names.handles_start


def test_inference_keeps_its_config_keys_and_task_key(tmp_path: Path) -> None:
    from fedloom.algorithms.ml import ModelSpec

    model = ModelSpec("mlp", {"in_features": 12, "hidden": [4], "out_features": 2})
    task = BatchedInference(model, batch_size=4, test_run=True, timeout=9.0)
    config = task.to_config()
    assert set(config) == {
        "model", "batch_size", "resilience", "max_consecutive_batch_failures", "test_run",
        "run_on_new_data_only", "force_rerun_failed_files", "fail_on_no_new_data", "timeout",
        "report_at_pod", "output_images", "reduce", "send_rows",
    }  # fmt: skip
    assert load_protocol(task.dump()) == task
    source = folder(tmp_path, ["a.png"])
    # the pod's records of processed files are keyed as before: run flags left out
    flags = ("test_run", "run_on_new_data_only", "force_rerun_failed_files", "timeout")
    kept = {k: v for k, v in config.items() if k not in (*flags, "fail_on_no_new_data")}
    expected = task_hash({"protocol": "inference", "config": kept}, source.identity())
    assert task.task_key(source) == expected
    assert BatchedInference(model, batch_size=4).task_key(source) == expected
    strict = BatchedInference(
        model, batch_size=4, run_on_new_data_only=True, fail_on_no_new_data=True
    )
    assert strict.task_key(source) == expected


# --- the flow -------------------------------------------------------------------------------


async def test_a_clean_run_says_every_step_and_reduces_every_batch(tmp_path: Path) -> None:
    names = [f"f{i}.png" for i in range(7)]
    recorder = Recorder()
    ledger = StoreLedger(MemoryPodStore())
    flow = await run_flow(
        Names(batch_size=3),
        {"pod-a": folder(tmp_path, names)},
        ledger=ledger,
        hooks=HookSet([("recorder", recorder)]),
    )
    assert flow.workers["pod-a"] == {"files": 7, "failed": 0, "batches": 3}
    final = flow.result["final"]["pod-a"]
    assert final["names"] == names and final["batches"] == 3 and final["failed"] == {}
    assert final["setup"] == ["hello", 6.0]  # the setup step's values reached the worker
    assert [(batch, len(found)) for _, batch, found in flow.result["batches"]] == [
        (1, 3),
        (2, 3),
        (3, 1),
    ]
    counts = kinds(flow, MessageType.NUM_BATCHES)
    assert counts[0] == -1 and counts[-1] == 3 and len(counts) == 2
    assert kinds(flow, MessageType.CURRENT_BATCH_ID) == [1, 2, 3, 4]
    points = [event.point for event in recorder.events]
    assert points[:3] == [HookPoint.INIT_START, HookPoint.INIT_END, HookPoint.RUN_START]
    assert points[-2:] == [HookPoint.RESILIENCE_END, HookPoint.RUN_END]
    assert points.count(HookPoint.BATCH_END) == 3
    key = Names(batch_size=3).task_key(folder(tmp_path, []))
    assert sorted(await ledger.processed_files(key)) == names


async def test_resilience_tells_batch_level_from_file_level_failures(tmp_path: Path) -> None:
    names = ["a0.png", "a1-poison.png", "a2.png", "b0-broken.png", "b1.png"]
    names += ["b2-corrupt.png", "c0-skip.png", "c1.png"]
    ledger = StoreLedger(MemoryPodStore())
    protocol = Names(batch_size=3)
    flow = await run_flow(protocol, {"pod-a": folder(tmp_path, names)}, ledger=ledger)
    final = flow.result["final"]["pod-a"]
    # the poisoned batch was a batch-level problem: each of its files succeeded alone
    assert final["names"] == ["a0.png", "a1-poison.png", "a2.png", "b1.png", "c1.png"]
    assert final["failed"] == {
        "b0-broken.png": "file",
        "b2-corrupt.png": "file",
        "c0-skip.png": "file",
    }
    assert flow.workers["pod-a"] == {"files": 5, "failed": 3, "batches": 3}
    # retries send their results under the last batch id
    sent = [(batch, found) for _, batch, found in flow.result["batches"]]
    assert sent[0] == (3, ["c1.png"]) and all(batch == 3 for batch, _ in sent)
    assert sorted(name for _, found in sent for name in found) == final["names"]
    key = protocol.task_key(folder(tmp_path, []))
    recorded = await ledger.failed_files(key)
    assert [(f.name, f.level, f.exception_type) for f in recorded] == [
        ("b0-broken.png", "file", "ValueError"),
        ("b2-corrupt.png", "file", "DataError"),
        ("c0-skip.png", "file", "DataError"),
    ]
    assert sorted(await ledger.processed_files(key)) == final["names"]


@pytest.mark.parametrize(
    ("settings", "outcome"),
    [
        ({"max_consecutive_batch_failures": 2}, "2 batches failed in a row"),
        ({"resilience": False}, "1 batches failed in a row"),
        ({"max_consecutive_batch_failures": -1}, None),
        ({}, None),  # 3 failures in a row stay under the default of 5
    ],
)
async def test_consecutive_batch_failures(
    tmp_path: Path, settings: dict[str, Any], outcome: str | None
) -> None:
    names = [f"p{i}-poison.png" for i in range(6)]
    flow = await run_flow(Names(batch_size=2, **settings), {"pod-a": folder(tmp_path, names)})
    worker = flow.workers["pod-a"]
    if outcome is None:
        assert worker == {"files": 6, "failed": 0, "batches": 3}
        assert flow.result["final"]["pod-a"]["names"] == names
    else:
        assert isinstance(worker, TooManyFailuresError) and outcome in str(worker)
        assert flow.result["aborted"]["pod-a"].startswith("WORKER_ERROR")


async def test_a_good_batch_resets_the_count_of_failures_in_a_row(tmp_path: Path) -> None:
    names = ["a0-poison.png", "a1.png", "b0.png", "b1.png", "c0-poison.png", "c1.png"]
    protocol = Names(batch_size=2, max_consecutive_batch_failures=2)
    flow = await run_flow(protocol, {"pod-a": folder(tmp_path, names)})
    assert flow.workers["pod-a"] == {"files": 6, "failed": 0, "batches": 3}


async def test_nothing_processed_at_all_is_too_many_failures_naming_the_first(
    tmp_path: Path,
) -> None:
    names = ["x0-broken.png", "x1-corrupt.png", "x2-skip.png"]
    flow = await run_flow(Names(batch_size=2), {"pod-a": folder(tmp_path, names)})
    assert isinstance(flow.workers["pod-a"], TooManyFailuresError)
    # the modeller hears why: the first file's failure, not only that everything failed
    why = flow.result["aborted"]["pod-a"]
    assert why == (
        "WORKER_ERROR: no batch and no file could be processed; "
        "first failure: x0-broken.png: a broken file"
    )


async def test_a_protocol_that_keeps_file_names_on_the_pod_gives_the_reason_only(
    tmp_path: Path,
) -> None:
    source = folder(tmp_path, ["scan-001-corrupt.png", "scan-002-corrupt.png"])
    flow = await run_flow(FileStatistics(batch_size=2), {"pod-a": source})
    assert isinstance(flow.workers["pod-a"], TooManyFailuresError)
    text = str(flow.result)
    assert "first failure (file names stay on the pod): could not load file '<file>'" in text
    assert "scan-" not in text


async def test_a_test_run_stops_after_the_first_batch(tmp_path: Path) -> None:
    names = [f"f{i}.png" for i in range(7)]
    flow = await run_flow(Names(batch_size=3, test_run=True), {"pod-a": folder(tmp_path, names)})
    assert flow.workers["pod-a"] == {"files": 3, "failed": 0, "batches": 1}
    assert flow.result["final"]["pod-a"]["names"] == names[:3]
    assert kinds(flow, MessageType.CURRENT_BATCH_ID) == [1]
    assert kinds(flow, MessageType.NUM_BATCHES)[-1] >= 1


async def test_a_batch_may_stop_the_task_after_it_is_delivered(tmp_path: Path) -> None:
    names = [f"f{i}.png" for i in range(8)] + ["g-corrupt.png"]
    ledger = StoreLedger(MemoryPodStore())
    recorder = Recorder()
    protocol = Names(batch_size=3, stop_at=2)
    flow = await run_flow(
        protocol,
        {"pod-a": folder(tmp_path, names)},
        ledger=ledger,
        hooks=HookSet([("recorder", recorder)]),
    )
    assert isinstance(flow.workers["pod-a"], LimitsExceededError)
    assert flow.result["aborted"]["pod-a"].startswith("LIMITS_EXCEEDED")
    assert flow.result["final"] == {}  # no final reduce step
    assert [batch for _, batch, _ in flow.result["batches"]] == [1, 2]
    key = protocol.task_key(folder(tmp_path, []))
    assert sorted(await ledger.processed_files(key)) == names[:6]
    assert HookPoint.RESILIENCE_END in [event.point for event in recorder.events]


async def test_new_data_only_and_forced_reruns_of_failed_files(tmp_path: Path) -> None:
    names = ["a.png", "b.png", "c-corrupt.png"]
    source = folder(tmp_path, names)
    ledger = StoreLedger(MemoryPodStore())
    first = await run_flow(Names(batch_size=2), {"pod-a": source}, ledger=ledger)
    assert first.result["final"]["pod-a"]["names"] == ["a.png", "b.png"]

    new_only = Names(batch_size=2, run_on_new_data_only=True)
    again = await run_flow(new_only, {"pod-a": source}, ledger=ledger)
    assert again.workers["pod-a"] == {"files": 0, "failed": 0, "batches": 0, "no_new_data": True}

    stat = (tmp_path / "b.png").stat()
    os.utime(tmp_path / "b.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    modified = await run_flow(new_only, {"pod-a": source}, ledger=ledger)
    assert modified.result["final"]["pod-a"]["names"] == ["b.png"]

    Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(tmp_path / "c-corrupt.png")
    forced = Names(batch_size=2, run_on_new_data_only=True, force_rerun_failed_files=True)
    repaired = await run_flow(forced, {"pod-a": source}, ledger=ledger)
    assert repaired.result["final"]["pod-a"]["names"] == ["c-corrupt.png"]
    key = forced.task_key(source)
    assert await ledger.failed_files(key) == []


async def test_nothing_new_completes_with_zero_files(tmp_path: Path) -> None:
    names = ["a.png", "b.png", "c-corrupt.png"]
    ledger = StoreLedger(MemoryPodStore())
    source = folder(tmp_path / "a", names)
    new_only = Names(batch_size=2, run_on_new_data_only=True)
    await run_flow(new_only, {"pod-a": source}, ledger=ledger)
    recorder = Recorder()
    # pod-b shares the ledger but has its own files: they are new to it
    other = folder(tmp_path / "b", ["z.png"])
    flow = await run_flow(
        new_only,
        {"pod-a": source, "pod-b": other},
        ledger=ledger,
        hooks=HookSet([("recorder", recorder)]),
    )
    assert flow.workers["pod-a"] == {"files": 0, "failed": 0, "batches": 0, "no_new_data": True}
    assert flow.workers["pod-b"] == {"files": 1, "failed": 0, "batches": 1}
    result = flow.result
    assert result["no_new_data"] == ["pod-a"] and result["aborted"] == {}
    assert result["active"] == ["pod-a", "pod-b"]  # pod-a completed: it did not leave
    assert list(result["final"]) == ["pod-b"]  # no final reduce step without files
    assert [body for pod, kind, body in flow.status if pod == "pod-a"] == [{"count": 0}]
    points = [event.point for event in recorder.events if event.pod == "pod-a"]
    assert points == [
        HookPoint.INIT_START,
        HookPoint.INIT_END,
        HookPoint.RUN_START,
        HookPoint.RUN_END,
    ]


async def test_nothing_new_fails_only_on_request_and_an_empty_folder_is_no_data(
    tmp_path: Path,
) -> None:
    ledger = StoreLedger(MemoryPodStore())
    source = folder(tmp_path / "a", ["a.png"])
    await run_flow(Names(), {"pod-a": source}, ledger=ledger)
    strict = Names(run_on_new_data_only=True, fail_on_no_new_data=True)
    flow = await run_flow(strict, {"pod-a": source}, ledger=ledger)
    assert isinstance(flow.workers["pod-a"], NoNewDataError)
    assert "NO_NEW_DATA" in str(flow.result)  # no pod was ready

    empty = folder(tmp_path / "empty", [])
    flow = await run_flow(Names(), {"pod-a": empty})
    assert isinstance(flow.workers["pod-a"], EmptyDatasetError)
    assert "NO_DATA" in str(flow.result)
    # a run on new data only over an empty (drop) folder: nothing new, nothing to do
    flow = await run_flow(Names(run_on_new_data_only=True), {"pod-a": empty})
    assert flow.result["no_new_data"] == ["pod-a"]


@pytest.mark.parametrize("refuse", [False, True])
async def test_files_are_recorded_at_the_end_when_nothing_leaves_before(
    tmp_path: Path, refuse: bool
) -> None:
    names = [f"f{i}.png" for i in range(5)]
    ledger = StoreLedger(MemoryPodStore())
    protocol = NamesAtEnd(batch_size=2, refuse=refuse)
    flow = await run_flow(protocol, {"pod-a": folder(tmp_path, names)}, ledger=ledger)
    recorded = await ledger.processed_files(protocol.task_key(folder(tmp_path, [])))
    if refuse:
        assert isinstance(flow.workers["pod-a"], PrivacyThresholdError)
        assert flow.result["aborted"]["pod-a"].startswith("PRIVACY_THRESHOLD")
        assert recorded == {}  # nothing was released, so nothing counts as processed
    else:
        assert flow.result["final"]["pod-a"]["names"] == names
        assert sorted(recorded) == names


async def test_a_pod_without_a_folder_is_refused(tmp_path: Path) -> None:
    arrays = ArraySource(np.zeros((4, 2), dtype=np.float32), np.zeros(4, dtype=np.int64))
    flow = await run_flow(Names(), {"pod-a": arrays})
    assert isinstance(flow.workers["pod-a"], SchemaMismatchError)
    assert "folder-of-files" in str(flow.workers["pod-a"])


async def test_a_pod_with_a_malformed_final_message_is_dropped(tmp_path: Path) -> None:
    told: list[AbortReason] = []

    async def liar(mailbox: WorkerMailbox) -> None:
        await mailbox.send(MessageType.TASK_START, {})
        await mailbox.receive(MessageType.TASK_START)
        await mailbox.receive(MessageType.MODEL_PARAMETERS)
        await mailbox.send(MessageType.BATCHES_COMPLETE, {"stage": "TASK_COMPLETE", "names": 5})
        try:
            await mailbox.receive(MessageType.TASK_COMPLETE)
        except FedloomError as exc:
            told.append(getattr(exc, "reason", AbortReason.WORKER_ERROR))

    source = folder(tmp_path, ["a.png", "b.png"])
    flow = await run_flow(Names(), {"pod-a": source}, raw={"pod-liar": liar})
    assert flow.result["final"]["pod-a"]["names"] == ["a.png", "b.png"]
    assert "pod-liar" not in flow.result["final"]
    assert flow.result["aborted"]["pod-liar"].startswith("WORKER_ERROR: malformed")
    assert told == [AbortReason.WORKER_ERROR]


# --- file statistics: config, pooling, wire checks ----------------------------------------


def test_file_statistics_config() -> None:
    task = FileStatistics(channels=1, statistics=("mean",), batch_size=8)
    assert load_protocol(task.dump()) == task
    assert task.to_config()["statistics"] == ["mean"]
    for bad in (
        {"channels": 0},
        {"channels": True},
        {"channels": 5000},
        {"statistics": ()},
        {"statistics": ("median",)},
        {"statistics": ("mean", "mean")},
        {"statistics": ("std",)},
        {"statistics": ["mean"]},
    ):
        with pytest.raises(ConfigError):
            FileStatistics(**bad)
    with pytest.raises(ConfigError, match="unknown key"):
        FileStatistics.from_config({"channels": 3, "colour": "red"})
    with pytest.raises(ConfigError):
        FileStatistics.from_config({"statistics": "mean"})


def _parts(data: np.ndarray, cuts: Sequence[int]) -> list[ChannelStatistics]:
    return [
        ChannelStatistics(
            1, len(part), tuple(part.mean(axis=0).tolist()), tuple(part.std(axis=0).tolist())
        )
        for part in np.split(data, cuts)
    ]


def test_pooling_is_exact() -> None:
    rng = np.random.default_rng(3)
    data = rng.normal(loc=[0.0, 5.0, -2.0], scale=[1.0, 0.1, 3.0], size=(101, 3))
    pooled = pool_statistics(_parts(data, [7, 40, 41]))
    assert (pooled.files, pooled.count) == (4, 101)
    assert pooled.mean is not None and pooled.std is not None
    np.testing.assert_allclose(pooled.mean, data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(pooled.std, data.std(axis=0), rtol=1e-12)
    means_only = pool_statistics([ChannelStatistics(1, 2, (1.0,)), ChannelStatistics(1, 6, (3.0,))])
    assert means_only.mean == (2.5,) and means_only.std is None
    assert pool_statistics([ChannelStatistics(2, 5)]).mean is None
    with pytest.raises(ConfigError):
        pool_statistics([])
    with pytest.raises(ConfigError, match="channel"):
        pool_statistics([ChannelStatistics(1, 2, (1.0,)), ChannelStatistics(1, 2, (1.0, 2.0))])


@pytest.mark.parametrize(
    "body",
    [
        None,
        {"files": 0, "count": 4, "mean": [0.5], "std": [0.1]},
        {"files": True, "count": 4, "mean": [0.5], "std": [0.1]},
        {"files": 1, "count": 4, "mean": [0.5, 0.5], "std": [0.1]},
        {"files": 1, "count": 4, "mean": [math.nan], "std": [0.1]},
        {"files": 1, "count": 4, "mean": ["0.5"], "std": [0.1]},
        {"files": 1, "count": 4, "mean": [0.5], "std": [-0.1]},
        {"files": 1, "count": 4, "mean": [0.5]},
    ],
)
def test_malformed_pod_statistics_are_protocol_errors(body: object) -> None:
    with pytest.raises(ProtocolError):
        ChannelStatistics.from_body(body, 1, ("mean", "std"))


async def test_file_statistics_over_the_base(tmp_path: Path) -> None:
    """The statistics protocol on the same in-memory flow: pixels, a corrupt file, a 2-D
    array loaded as one channel, and a channel count the pod's images do not have."""
    root = tmp_path / "imgs"
    root.mkdir()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(3, 2 + i), dtype=np.uint8) for i in range(4)]
    for i, pixels in enumerate(images):
        Image.fromarray(pixels).save(root / f"g{i}.png")
    (root / "x.png").write_bytes(b"junk")
    source = FileSource(root, pattern="*.png", loader_options={"mode": "L"})
    flow = await run_flow(FileStatistics(channels=1, batch_size=3), {"pod-a": source})
    values = np.concatenate([image.ravel() for image in images]).astype(np.float32) / 255
    stats = flow.result.pooled
    assert (stats.files, stats.count) == (4, values.size)
    np.testing.assert_allclose(stats.mean, [values.astype(np.float64).mean()], rtol=1e-9)
    np.testing.assert_allclose(stats.std, [values.astype(np.float64).std()], rtol=1e-9)
    assert flow.result.failed == {"pod-a": 1}

    wrong = await run_flow(FileStatistics(channels=3), {"pod-a": source})
    assert isinstance(wrong.workers["pod-a"], SchemaMismatchError)
    assert "INCOMPATIBLE_DATASOURCE" in str(wrong.result)


async def test_file_statistics_of_channels_first_images_are_the_same(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    for i in range(3):
        pixels = rng.integers(0, 256, size=(4, 5, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"rgb{i}.png")
    stats = {}
    for first in (False, True):
        source = FileSource(tmp_path, pattern="*.png", loader_options={"channels_first": first})
        flow = await run_flow(FileStatistics(channels=3, batch_size=2), {"pod-a": source})
        assert flow.result.failed == {"pod-a": 0}
        stats[first] = flow.result.pooled
    assert stats[True].files == stats[False].files == 3
    np.testing.assert_allclose(stats[True].mean, stats[False].mean, rtol=1e-12)
    np.testing.assert_allclose(stats[True].std, stats[False].std, rtol=1e-12)


async def test_results_and_summaries_name_the_pods_with_nothing_new(tmp_path: Path) -> None:
    from fedloom.algorithms.ml import ModelSpec

    source = folder(tmp_path, ["a.png", "b.png"])
    model = ModelSpec("mlp", {"in_features": 12, "hidden": [], "out_features": 2})
    ledger = StoreLedger(MemoryPodStore())
    inference = BatchedInference(model, run_on_new_data_only=True)
    statistics = FileStatistics(run_on_new_data_only=True)
    for protocol in (inference, statistics):
        first = await run_flow(protocol, {"pod-a": source}, ledger=ledger)
        assert protocol.summarise(first.result)["files"] == {"pod-a": 2}
        assert "no_new_data" not in protocol.summarise(first.result)

    again = (await run_flow(inference, {"pod-a": source}, ledger=ledger)).result
    assert again.no_new_data == ("pod-a",) and again.rows == {"pod-a": []}
    assert inference.summarise(again) == {
        "files": {"pod-a": 0},
        "failed": {"pod-a": 0},
        "no_new_data": ["pod-a"],
    }
    stats = (await run_flow(statistics, {"pod-a": source}, ledger=ledger)).result
    assert stats.no_new_data == ("pod-a",) and stats.pods == {}
    assert statistics.summarise(stats) == {
        "files": {"pod-a": 0},
        "failed": {},
        "pooled": {"files": 0, "count": 0},
        "no_new_data": ["pod-a"],
    }
