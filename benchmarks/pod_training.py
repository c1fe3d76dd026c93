"""FedAvg over 1, 2 and 4 local pod processes against the bare-loop limit of the same work.

Each pod is a real ``fedloom pod start`` process behind a real hub (``LocalCluster``: TLS,
signed and end-to-end encrypted messages), training in its task's child process. Each pod
holds 2,000 rows of 6 features and a binary label (a CSV file); FedAvg trains an MLP
6 -> 64 -> 64 -> 2 for 3 local epochs of batch 16 per round (SGD, lr 0.05), with the
default validation split of 20 %.

The limit is the same local work in this one plain process with plain torch on one
thread: per round, each pod's evaluation of its validation rows and its 3 epochs over its
training rows, timed and summed over the pods, divided by ``min(pods, cores)``: the best
any framework could do per round on this machine. ``x_limit`` is the pods' median round
over that limit (rounds 1.. : round 0 warms up each child); the simulation engine runs W1
at 1.7-1.9x its own limit.

``--threads N`` writes ``[worker] threads = N`` into every pod.toml instead of the
cluster's default budget (the machine's cores shared among the pods and their task
slots); ``--threads <cores>`` is how task children ran before pods had thread budgets
(torch's default: one thread per core in every child).

    python benchmarks/pod_training.py [--pods 1 2 4] [--rounds 6] [--threads N]

prints one JSON line per pod count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

ROWS = 2_000
FEATURES = 6
EPOCHS = 3
BATCH_SIZE = 16
LEARNING_RATE = 0.05
VALIDATION_FRACTION = 0.2


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def pod_data(index: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(index)
    x = rng.normal(size=(ROWS, FEATURES)).astype(np.float32)
    y = (x @ np.linspace(-1.0, 1.0, FEATURES) > 0).astype(np.int64)
    return x, y


def write_pods(folder: Path, count: int) -> dict[str, Path]:
    paths = {}
    for index in range(count):
        x, y = pod_data(index)
        frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(FEATURES)])
        frame["label"] = y
        paths[f"pod-{index}"] = folder / f"pod-{index}.csv"
        frame.to_csv(paths[f"pod-{index}"], index=False)
    return paths


def build() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(FEATURES, 64),
        nn.ReLU(),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Linear(64, 2),
    )


def bare_round_limits(count: int, rounds: int) -> list[float]:
    """Per round: the pods' plain-torch local work on one thread, summed, / min(pods, cores)."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build()
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    loss_fn = nn.CrossEntropyLoss()
    data = []
    for index in range(count):
        x, y = pod_data(index)
        n_val = int(len(x) * VALIDATION_FRACTION)
        order = np.random.default_rng(index).permutation(len(x))
        data.append(
            (
                torch.from_numpy(x[order[n_val:]]),
                torch.from_numpy(y[order[n_val:]]),
                torch.from_numpy(x[order[:n_val]]),
                torch.from_numpy(y[order[:n_val]]),
            )
        )
    limits = []
    for _ in range(rounds):
        busy = 0.0
        sums = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in global_state.items()}
        for x_train, y_train, x_val, y_val in data:
            model.load_state_dict(global_state)
            began = time.perf_counter()
            model.eval()
            with torch.no_grad():
                loss_fn(model(x_val), y_val)
            optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)
            model.train()
            for _ in range(EPOCHS):
                order = torch.randperm(len(x_train))
                for start in range(0, len(x_train), BATCH_SIZE):
                    rows = order[start : start + BATCH_SIZE]
                    optimizer.zero_grad()
                    loss_fn(model(x_train[rows]), y_train[rows]).backward()
                    optimizer.step()
            busy += time.perf_counter() - began
            for key, value in model.state_dict().items():
                sums[key] += value.double() / count
        global_state = {k: s.to(global_state[k].dtype) for k, s in sums.items()}
        limits.append(busy / min(count, cores()))
    return limits


async def pod_rounds(count: int, rounds: int, threads: int | None, root: Path) -> dict[str, Any]:
    from fedloom._cluster import LocalCluster, PodSpec
    from fedloom.algorithms.ml import ModelSpec, TrainingConfig
    from fedloom.modeller import Modeller
    from fedloom.protocols import FedAvg

    paths = write_pods(root, count)
    worker = {} if threads is None else {"threads": threads}
    specs = {
        pod: PodSpec(
            datasets={"default": {"kind": "csv", "path": str(path), "label_column": "label"}},
            worker=worker,
        )
        for pod, path in paths.items()
    }
    fedavg = FedAvg(
        model=ModelSpec("mlp", {"in_features": FEATURES, "hidden": [64, 64], "out_features": 2}),
        rounds=rounds,
        training=TrainingConfig(epochs=EPOCHS, batch_size=BATCH_SIZE, learning_rate=LEARNING_RATE),
        validation_fraction=VALIDATION_FRACTION,
    )
    async with LocalCluster(root / "cluster", specs) as cluster:
        modeller = Modeller(await cluster.connect_modeller())
        try:
            began = time.perf_counter()
            run = await modeller.run(fedavg, sorted(paths))
            total = time.perf_counter() - began
        finally:
            await modeller.close()
    seconds = [row.seconds for row in run.result.history]
    return {"round_seconds": [round(s, 4) for s in seconds], "task_s": round(total, 3)}


def measure(count: int, rounds: int, threads: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fedloom-pod-bench-") as folder:
        pods = asyncio.run(pod_rounds(count, rounds, threads, Path(folder)))
    limits = bare_round_limits(count, rounds)
    median = statistics.median(pods["round_seconds"][1:])
    limit = statistics.median(limits[1:])
    return {
        "benchmark": "pod_training",
        "pods": count,
        "threads": "default budget" if threads is None else threads,
        "cores": cores(),
        **pods,
        "median_round_s": round(median, 4),
        "limit_rounds_s": [round(s, 4) for s in limits],
        "median_limit_s": round(limit, 4),
        "x_limit": round(median / limit, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.rounds < 2:
        sys.exit("--rounds must be >= 2 (round 0 warms up)")
    for count in args.pods:
        print(json.dumps(measure(count, args.rounds, args.threads)), flush=True)


if __name__ == "__main__":
    main()
