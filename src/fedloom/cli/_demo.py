"""The demo behind ``fedloom demo`` / ``make demo``.

The scikit-learn digits dataset (it ships with scikit-learn: no download) is split into a
held-out test set and three pods with a non-IID Dirichlet split by label. Each pod gets its
share as a CSV file. The modeller first runs federated analytics over the pods' feature
tables, then federated averaging of a small MLP, and writes a report folder.

By default the hub and the pods are separate OS processes on 127.0.0.1 (TLS, signed and
end-to-end encrypted messages, see :class:`~fedloom._cluster.LocalCluster`); with
``in_process=True`` everything runs in this process over the in-memory hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import typing
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console

from fedloom._cluster import LocalCluster, PodSpec
from fedloom._local import LocalFederation
from fedloom.algorithms._analytics import AnalyticsRequest
from fedloom.algorithms.ml import ModelSpec, TrainingConfig, evaluate, state_to_arrays
from fedloom.cli._progress import LiveProgress
from fedloom.cli._report import people_console, rounds_table, statistics_table
from fedloom.datasources import TableSource, dirichlet_partition
from fedloom.errors import ConfigError
from fedloom.modeller import Modeller, TaskResult
from fedloom.protocols import Analytics, AnalyticsResult, FedAvg, FedAvgResult, TaskProtocol
from fedloom.store import SqliteExperimentStore, SqlitePodStore

POD_NAMES = ("pod-a", "pod-b", "pod-c")
ANALYTICS_COLUMNS = ("pixel_19", "pixel_28", "pixel_36", "pixel_43")


@dataclass(frozen=True)
class DemoOptions:
    out: Path = Path("fedloom-report")
    rounds: int = 12
    seed: int = 0
    alpha: float = 0.5
    in_process: bool = False

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds must be >= 1, got {self.rounds}")
        if not self.alpha > 0:
            raise ConfigError(f"alpha must be > 0, got {self.alpha}")


@dataclass(frozen=True)
class DemoReport:
    final_accuracy: float
    analytics: dict[str, dict[str, Any]]
    history: list[dict[str, Any]]
    out: Path


def split_digits(
    seed: int, alpha: float, data_dir: Path
) -> tuple[dict[str, Path], np.ndarray, np.ndarray]:
    """Write each pod's share of the digits as CSV; return the paths and the test set."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    n_test = len(x) // 5
    test, train = order[:n_test], order[n_test:]
    parts = dirichlet_partition(
        y[train], len(POD_NAMES), alpha=alpha, seed=seed, min_samples_per_client=50
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for pod, part in zip(POD_NAMES, parts, strict=True):
        rows = train[part]
        frame = pd.DataFrame(x[rows], columns=[f"pixel_{i}" for i in range(x.shape[1])])
        frame["label"] = y[rows]
        paths[pod] = data_dir / f"{pod}.csv"
        frame.to_csv(paths[pod], index=False)
    return paths, x[test], y[test]


def build_tasks(options: DemoOptions) -> tuple[Analytics, FedAvg]:
    analytics = Analytics(
        request=AnalyticsRequest(
            statistics=("count", "mean", "std", "min", "max", "quantiles", "histogram"),
            columns=ANALYTICS_COLUMNS,
            histogram_bins=8,
        )
    )
    fedavg = FedAvg(
        model=ModelSpec("mlp", {"in_features": 64, "hidden": [64], "out_features": 10}),
        rounds=options.rounds,
        training=TrainingConfig(
            epochs=2, batch_size=32, optimizer="sgd", learning_rate=0.1, momentum=0.9
        ),
        seed=options.seed,
        validation_fraction=0.2,
    )
    return analytics, fedavg


async def run_demo(options: DemoOptions, console: Console | None = None) -> DemoReport:
    """Run the whole demo and write the report folder; returns what it wrote."""
    console = console or people_console()
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    paths, x_test, y_test = split_digits(options.seed, options.alpha, out / "data")
    analytics_task, fedavg_task = build_tasks(options)
    modeller_store = SqliteExperimentStore(out / "experiments.sqlite")
    try:
        async with _federation(options, paths, modeller_store, console) as federation:
            console.rule("[bold]Federated analytics")
            analytics_run = await federation.run(analytics_task, name="digits-analytics")
            analytics: AnalyticsResult = analytics_run.result
            console.print(statistics_table(analytics.statistics))
            console.rule("[bold]Federated averaging")
            progress = LiveProgress(console, sorted(paths), rounds=options.rounds)
            with progress, federation.modeller.subscribe(progress.on_event):
                fedavg_run = await federation.run(fedavg_task, name="digits-fedavg")
        fedavg: FedAvgResult = fedavg_run.result
        final = evaluate(fedavg.model(), x_test, y_test)
        history = [r.to_dict() for r in fedavg.history]
        console.print(rounds_table(history))
        console.print(f"[bold green]final held-out accuracy: {final['accuracy']:.4f}")
        report = DemoReport(final["accuracy"], analytics.statistics, history, out)
        _write_report(report, fedavg, final, fedavg_run.experiment_id)
        console.print(f"report written to {out}/")
        return report
    finally:
        modeller_store.close()


class _Runner(typing.Protocol):
    @property
    def modeller(self) -> Modeller: ...

    async def run(self, protocol: TaskProtocol[Any], **options: Any) -> TaskResult[Any]: ...


@contextlib.asynccontextmanager
async def _federation(
    options: DemoOptions,
    paths: Mapping[str, Path],
    modeller_store: SqliteExperimentStore,
    console: Console,
) -> AsyncIterator[_Runner]:
    """The pods, in this process or as OS processes behind a hub."""
    out = options.out
    if options.in_process:
        pods = {pod: TableSource(path, label_column="label") for pod, path in paths.items()}
        (out / "pods").mkdir(exist_ok=True)
        pod_stores = {pod: SqlitePodStore(out / "pods" / f"{pod}.sqlite") for pod in pods}
        try:
            async with LocalFederation(
                pods, modeller_store=modeller_store, pod_stores=pod_stores
            ) as federation:
                yield federation
        finally:
            for store in pod_stores.values():
                store.close()
        return
    specs = {
        pod: PodSpec(
            datasets={
                "default": {"kind": "table", "path": str(path.resolve()), "label_column": "label"}
            }
        )
        for pod, path in paths.items()
    }
    with console.status("starting a hub and 3 pods as separate processes (TLS on 127.0.0.1)"):
        cluster = LocalCluster(out / "cluster", specs)
        await cluster.start()
    try:
        console.print(
            f"hub pid {cluster.pid('hub')} on {cluster.address}; "
            + ", ".join(f"{pod} pid {cluster.pid(pod)}" for pod in paths)
        )
        mailbox = await cluster.connect_modeller()
        modeller = Modeller(mailbox, store=modeller_store)
        try:
            yield _ClusterRunner(modeller, sorted(paths))
        finally:
            await modeller.close()
    finally:
        codes = await cluster.stop()
        console.print(
            "stopped: " + ", ".join(f"{name} (exit {code})" for name, code in codes.items())
        )


class _ClusterRunner:
    def __init__(self, modeller: Modeller, pods: list[str]) -> None:
        self.modeller = modeller
        self._pods = pods

    async def run(self, protocol: TaskProtocol[Any], **options: Any) -> TaskResult[Any]:
        return await self.modeller.run(protocol, self._pods, **options)


def _write_report(
    report: DemoReport, fedavg: FedAvgResult, final: Mapping[str, float], experiment_id: str | None
) -> None:
    from safetensors.numpy import save_file

    out = report.out
    save_file(state_to_arrays(fedavg.model()), str(out / "final_model.safetensors"))
    metrics = {
        "experiment_id": experiment_id,
        "final_accuracy": report.final_accuracy,
        "final_loss": final["loss"],
        "rounds": report.history,
        "analytics": report.analytics,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, allow_nan=False))
    _plot(report.history, out / "training.png")


def _plot(history: list[dict[str, Any]], path: Path) -> None:
    """``training.png``: rounds from 0 as in the table, a thin line per pod (see ``plots``)."""
    from fedloom.algorithms.ml._plots import RoundCurves, plot_training

    rounds = [RoundCurves(row["round"], row["aggregated"], row["per_pod"]) for row in history]
    plot_training(rounds, path, members="pod")


def main(options: DemoOptions) -> DemoReport:
    return asyncio.run(run_demo(options))
