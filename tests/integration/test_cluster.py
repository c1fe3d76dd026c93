"""A hub and pods as real OS processes on 127.0.0.1: flows, crashes, restarts, signals."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psutil
import pytest

from fedloom import (
    Analytics,
    AnalyticsRequest,
    FedAvg,
    Modeller,
    ModelSpec,
    RequestPolicy,
    TrainingConfig,
)
from fedloom._cluster import LocalCluster, PodSpec
from fedloom._events import Event, EventKind
from fedloom.errors import PodResponseError
from fedloom.pod import SqlitePodStore

from .cli_kit import wait_for_rows

PODS = ("pod-a", "pod-b", "pod-c")


def _write_pod_data(root: Path, pods: tuple[str, ...] = PODS) -> dict[str, PodSpec]:
    rng = np.random.default_rng(0)
    specs = {}
    for index, pod in enumerate(pods):
        x = rng.normal(index, 1.0, size=(120, 4)).astype(np.float32)
        y = (x[:, 0] + x[:, 1] > 2 * index).astype(np.int64)
        frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(4)])
        frame["label"] = y
        path = root / "data" / f"{pod}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(path, index=False)
        specs[pod] = PodSpec(
            datasets={"default": {"kind": "table", "path": str(path), "label_column": "label"}}
        )
    return specs


def _fedavg(rounds: int) -> FedAvg:
    return FedAvg(
        model=ModelSpec("mlp", {"in_features": 4, "hidden": [8], "out_features": 2}),
        rounds=rounds,
        training=TrainingConfig(epochs=1, batch_size=32, optimizer="sgd", learning_rate=0.1),
        seed=0,
    )


async def _pod_statuses(
    cluster: LocalCluster, pods: tuple[str, ...], settled: int = 1
) -> dict[str, list[str]]:
    """Each pod's task-run statuses, once each has ``settled`` finished runs (≤ 20 s).

    The modeller returns as soon as it sends TASK_COMPLETE; a pod records the end of the task
    when it reads that message, a moment later.
    """
    deadline = time.monotonic() + 20
    while True:
        statuses = {}
        for pod in pods:
            with SqlitePodStore(cluster.pod_config_path(pod).parent / "pod.sqlite") as store:
                statuses[pod] = [r.status for r in store.task_runs()]
        done = all(
            sum(s in ("completed", "aborted") for s in found) >= settled
            for found in statuses.values()
        )
        if done or time.monotonic() > deadline:
            return statuses
        await asyncio.sleep(0.1)


def _no_tracebacks(cluster: LocalCluster, names: Mapping[str, Any]) -> None:
    for name in names:
        assert "Traceback" not in cluster.log_text(name), cluster.log_text(name)[-3000:]


@pytest.mark.async_timeout(240)
async def test_analytics_over_tls_and_pod_records(tmp_path: Path) -> None:
    specs = _write_pod_data(tmp_path)

    async with LocalCluster(tmp_path / "cluster", specs) as cluster:
        mailbox = await cluster.connect_modeller()
        modeller = Modeller(mailbox)
        run = await modeller.run(
            Analytics(AnalyticsRequest(statistics=("count", "mean"), columns=("f0",))),
            list(PODS),
        )
        assert run.result.statistics["f0"]["count"] == 360
        assert sorted(run.accepted) == list(PODS)
        await modeller.close()
        statuses = await _pod_statuses(cluster, PODS)
        codes = await cluster.stop()
    assert statuses == {pod: ["completed"] for pod in PODS}
    assert codes == dict.fromkeys([*PODS, "hub"], 0), codes
    _no_tracebacks(cluster, codes)


@pytest.mark.async_timeout(240)
async def test_pod_killed_mid_round_is_reported_and_the_round_completes(tmp_path: Path) -> None:
    specs = _write_pod_data(tmp_path)

    async with LocalCluster(tmp_path / "cluster", specs) as cluster:
        modeller = Modeller(await cluster.connect_modeller())
        killed: list[int] = []

        def on_round(event: Event) -> None:
            if event.kind is EventKind.ROUND_FINISHED and not killed:
                killed.append(int(event.fields["round"]))
                os.kill(cluster.pid("pod-c"), signal.SIGKILL)

        modeller.subscribe(on_round)

        run = await modeller.run(
            _fedavg(rounds=3),
            list(PODS),
            # Round 0 spawns each pod's task child (torch import): on a loaded 2-core
            # machine 8 s was too short for it and dropped healthy pods.
            policy=RequestPolicy(timeout=20.0, on_timeout="discard"),
        )
        assert "pod-c" in run.aborted, run.aborted
        history = run.result.history
        assert len(history) == 3
        assert sorted(history[0].pods) == list(PODS)
        for later in history[1:]:
            assert sorted(later.pods) == ["pod-a", "pod-b"]
        await modeller.close()
        codes = await cluster.stop()
    assert codes["pod-c"] == -signal.SIGKILL
    assert all(code == 0 for name, code in codes.items() if name != "pod-c"), codes


@pytest.mark.async_timeout(240)
async def test_hub_killed_and_restarted_mid_task(tmp_path: Path) -> None:
    specs = _write_pod_data(tmp_path)

    async with LocalCluster(tmp_path / "cluster", specs) as cluster:
        modeller = Modeller(await cluster.connect_modeller(backoff=(0.05, 0.5)))
        restarted = asyncio.Event()
        restarts: list[asyncio.Task[None]] = []

        async def crash_and_restart() -> None:
            await cluster.kill("hub")
            await asyncio.sleep(0.5)
            await cluster.start_hub()
            restarted.set()

        def on_round(event: Event) -> None:
            if event.kind is EventKind.ROUND_FINISHED and not restarts:
                restarts.append(asyncio.ensure_future(crash_and_restart()))

        modeller.subscribe(on_round)

        run = await modeller.run(
            _fedavg(rounds=4),
            list(PODS),
            policy=RequestPolicy(timeout=60.0, require_all=True),
        )
        assert restarted.is_set()
        assert run.aborted == {}
        assert [len(r.pods) for r in run.result.history] == [3, 3, 3, 3]
        assert [r.round_index for r in run.result.history] == [0, 1, 2, 3]
        await modeller.close()
        statuses = await _pod_statuses(cluster, PODS)
        codes = await cluster.stop()
    assert statuses == {pod: ["completed"] for pod in PODS}
    assert codes == dict.fromkeys([*PODS, "hub"], 0), codes
    for pod in PODS:
        assert "reconnected to the hub" in cluster.log_text(pod)


@pytest.mark.async_timeout(240)
async def test_modeller_not_allowed_by_the_pods_is_refused(tmp_path: Path) -> None:
    specs = _write_pod_data(tmp_path, ("pod-a",))

    # "eve" is registered with the hub as a modeller, but pod-a does not accept her
    async with LocalCluster(tmp_path / "cluster", specs, other_modellers=("eve",)) as cluster:
        modeller = Modeller(await cluster.connect_modeller("eve"))
        with pytest.raises(PodResponseError) as info:
            await modeller.run(
                Analytics(AnalyticsRequest(statistics=("count",), columns=("f0",))),
                ["pod-a"],
                policy=RequestPolicy(timeout=3.0),
            )
        assert "NO_ACCESS" in info.value.failed_pods["pod-a"]
        await modeller.close()
    with SqlitePodStore(cluster.pod_config_path("pod-a").parent / "pod.sqlite") as store:
        assert store.task_runs() == [], "nothing from eve may reach the pod"


@pytest.mark.async_timeout(240)
async def test_signals_stop_every_process_cleanly(tmp_path: Path) -> None:
    """SIGTERM/SIGINT to the hub, a pod and the modeller CLI: exit within 20 s, no traceback."""
    specs = _write_pod_data(tmp_path, ("pod-a", "pod-b"))
    task_file = tmp_path / "task.toml"
    store = tmp_path / "modeller.sqlite"

    async with LocalCluster(tmp_path / "cluster", specs) as cluster:
        task_file.write_text(
            "\n".join(
                [
                    f'hub = "{cluster.address}"',
                    f'identity = "{cluster.keys_dir / "modeller.key"}"',
                    'pods = ["pod-a", "pod-b"]',
                    f'store = "{store}"',
                    "[tls]",
                    f'ca = "{cluster.hub_dir / "tls" / "ca.crt"}"',
                    "[policy]",
                    "timeout = 60",
                    "[task]",
                    'protocol = "fedavg"',
                    "[task.config]",
                    "rounds = 100000",  # never done: the signal comes first
                    'model = {name = "mlp", config = {in_features = 4, hidden = [8], '
                    "out_features = 2}}",
                ]
            )
            + "\n"
        )
        modeller = subprocess.Popen(
            [sys.executable, "-m", "fedloom", "run", str(task_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            # the task is going once its first round is recorded
            await asyncio.to_thread(wait_for_rows, store, "rounds", 1, modeller)
            started = time.monotonic()
            modeller.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.to_thread(modeller.communicate, timeout=20)
            assert time.monotonic() - started < 20
        finally:
            if modeller.poll() is None:
                modeller.kill()
        assert modeller.returncode == 130, stderr
        assert "Traceback" not in stderr, stderr
        # a pod with SIGINT, then the rest with SIGTERM
        os.kill(cluster.pid("pod-a"), signal.SIGINT)
        started = time.monotonic()
        code = await cluster.stop_process("pod-a")
        assert code == 0 and time.monotonic() - started < 20
        codes = await cluster.stop()
    assert all(code == 0 for code in codes.values()), codes
    _no_tracebacks(cluster, codes)


@pytest.mark.async_timeout(240)
async def test_pod_daemon_isolates_each_task_in_a_child(tmp_path: Path) -> None:
    """A task that kills its own process ends with TASK_ABORT; the pod daemon goes on, and
    its children hold no hub connection of their own."""
    import fedloom.testing._faults  # noqa: F401 - the modeller needs the protocol's name
    from fedloom.errors import AbortReason
    from fedloom.testing._faults import Fault

    specs = _write_pod_data(tmp_path, ("pod-a",))
    specs["pod-a"] = PodSpec(
        datasets=specs["pod-a"].datasets,
        plugins=("fedloom.testing._faults",),
        worker={"heartbeat_interval": 1.0, "heartbeat_patience": 2},
    )

    async with LocalCluster(tmp_path / "cluster", specs) as cluster:
        modeller = Modeller(await cluster.connect_modeller())
        crashed = await modeller.run(Fault("kill"), ["pod-a"])
        assert crashed.aborted["pod-a"].reason is AbortReason.WORKER_CRASHED
        ok = await modeller.run(Fault("ok"), ["pod-a"])
        facts = ok.result["pod-a"]
        assert facts["pid"] != cluster.pid("pod-a")
        assert facts["inet_connections"] == 0 and facts["grpc_loaded"] is False
        await modeller.close()
        statuses = await _pod_statuses(cluster, ("pod-a",), settled=2)
        codes = await cluster.stop()
    assert statuses == {"pod-a": ["aborted", "completed"]}
    assert codes == {"pod-a": 0, "hub": 0}
    _no_tracebacks(cluster, codes)


@pytest.mark.async_timeout(240)
async def test_pod_killed_during_a_batched_task_loses_and_repeats_nothing(tmp_path: Path) -> None:
    """SIGKILL the pod mid-way through a batched inference, restart it, run again on new
    data only: every file is processed exactly once across both runs."""
    from PIL import Image

    from fedloom.datasources import FileSource  # noqa: F401 - the pod builds it from pod.toml
    from fedloom.protocols import BatchedInference

    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    names = [f"img{index:04d}.png" for index in range(400)]
    for name in names:
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / name)
    specs = {
        "pod-a": PodSpec(
            datasets={"default": {"kind": "folder", "path": str(folder), "pattern": "*.png"}},
            worker={"heartbeat_interval": 1.0},
        )
    }
    model = ModelSpec("mlp", {"in_features": 8 * 8 * 3, "hidden": [4], "out_features": 2})
    store_path = tmp_path / "cluster" / "pods" / "pod-a" / "pod.sqlite"

    async with LocalCluster(tmp_path / "cluster", specs) as cluster:
        modeller = Modeller(await cluster.connect_modeller())
        killed = asyncio.Event()
        children: list[psutil.Process] = []

        def on_progress(event: Event) -> None:
            batch_six = event.kind is EventKind.BATCH_STARTED and event.fields["batch"] == 6
            if batch_six and not killed.is_set():
                killed.set()
                children.extend(psutil.Process(cluster.pid("pod-a")).children())
                os.kill(cluster.pid("pod-a"), signal.SIGKILL)

        subscription = modeller.subscribe(on_progress)
        first = await modeller.run(
            BatchedInference(model, batch_size=10, timeout=5.0),
            ["pod-a"],
            policy=RequestPolicy(timeout=30.0),
        )
        subscription.cancel()
        assert killed.is_set()
        assert "pod-a" in first.aborted
        # the task's child process does not outlive its pod
        assert children, "the batched task ran in a child of the pod"
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
        with SqlitePodStore(store_path) as store:
            (task_hash,) = _hashes(store_path)  # one task definition so far
            processed_at_kill = set(store.processed_files(task_hash))
        assert 0 < len(processed_at_kill) < len(names)
        await cluster.start_pod("pod-a")  # restart the pod process
        second = await modeller.run(
            BatchedInference(model, batch_size=10, run_on_new_data_only=True),
            ["pod-a"],
            policy=RequestPolicy(timeout=60.0),
        )
        await modeller.close()
        await _pod_statuses(cluster, ("pod-a",), settled=2)
        await cluster.stop()
        second_files = {row["file"] for row in second.result.rows["pod-a"]}

    assert processed_at_kill.isdisjoint(second_files), "a processed file was processed again"
    assert processed_at_kill | second_files == set(names), "a file was lost"


def _hashes(path: Path) -> set[str]:
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as connection:
        return {
            row[0] for row in connection.execute("SELECT DISTINCT task_hash FROM processed_files")
        }
