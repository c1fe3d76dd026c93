"""The standard simulation workloads W1-W3 (docs/benchmarks.md) on fedloom.

    python benchmarks/sim_workloads.py --workload W1 [--backend process|thread|ray]
        [--start-method auto|spawn|forkserver|fork] [--tuned-limit]

First runs ``bare_loop.py --parallel`` for the same workload in separate plain processes
(the limit: per-round training seconds summed over the sampled clients, divided by 2
cores; and what two plain torch processes splitting the clients achieve on this machine),
then the fedloom simulation, and prints one JSON line:
{"system": "fedloom", "workload", "round_seconds", "median_round_s", "total_s",
 "startup_s", "median_limit_s", "efficiency", ...}. ``start_method`` is the one the pool
used (``auto`` forks when that is safe: here it is, as nothing but torch is loaded).

fedloom's workers keep the memory they free instead of taking an mmap per large tensor
(fedloom.worker._allocator), which the plain-torch limit does not. ``--tuned-limit`` also
measures the bare loop with the same malloc settings (``median_tuned_limit_s`` and
``tuned_efficiency``): how close the framework comes to plain torch on equal footing.
Medians are over rounds 2..5 (W1) and 2..3 (W2, W3) as the workloads say. ``startup_s``
is from ``Simulation.run()`` to the start of round 1 (workers started, torch and
TorchDynamo imported, models built); ``import_s`` is what importing fedloom.simulation
took in this process before that.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SPECS: dict[str, dict[str, Any]] = {
    "W1": {
        "model": ("mlp", {"in_features": 64, "hidden": [32], "out_features": 10}),
        "data": {"clients": 100, "samples": 32, "shape": [64]},
        "rounds": 5,
        "batch_size": 16,
        "sampling": {"kind": "all"},
    },
    "W2": {
        "model": (
            "cnn",
            {
                "in_channels": 3,
                "image_size": 32,
                "channels": [32, 64],
                "hidden": 256,
                "out_features": 10,
            },
        ),
        "data": {"clients": 20, "samples": 256, "shape": [3, 32, 32]},
        "rounds": 3,
        "batch_size": 32,
        "sampling": {"kind": "sequential", "per_round": 10},
    },
    "W3": {
        "model": ("mlp", {"in_features": 1024, "hidden": [4096, 4096], "out_features": 10}),
        "data": {"clients": 8, "samples": 16, "shape": [1024]},
        "rounds": 3,
        "batch_size": 16,
        "sampling": {"kind": "all"},
    },
}
TARGETS = {"W1": "median <= 3x limit", "W2": "efficiency >= 0.90", "W3": "efficiency >= 0.60"}


# what fedloom.worker._allocator.keep_freed_memory sets, as glibc's environment variables
TUNED_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def bare_limit(workload: str, *, tuned: bool = False) -> dict[str, Any]:
    script = Path(__file__).with_name("bare_loop.py")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run(
        [sys.executable, str(script), "--workload", workload, "--parallel"],
        check=True,
        capture_output=True,
        text=True,
        env=env | (TUNED_MALLOC if tuned else {}),
    ).stdout
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def run(workload: str, backend: str, start_method: str, tuned_limit: bool) -> dict[str, Any]:
    limit = bare_limit(workload)
    tuned = bare_limit(workload, tuned=True) if tuned_limit else None
    began = time.perf_counter()
    import torch

    from fedloom.algorithms.ml import ModelSpec, TrainingConfig
    from fedloom.simulation import DataSpec, Sampling, Simulation, SimulationConfig

    import_s = time.perf_counter() - began
    torch.set_num_threads(1)
    spec = SPECS[workload]
    config = SimulationConfig(
        model=ModelSpec(*spec["model"]),
        data=DataSpec("synthetic", spec["data"]),
        rounds=spec["rounds"],
        training=TrainingConfig(
            epochs=1,
            batch_size=spec["batch_size"],
            optimizer="sgd",
            learning_rate=0.05,
            momentum=0.0,
            shuffle=False,
        ),
        sampling=Sampling.from_config(spec["sampling"]),
        seed=0,
        num_parallels=2,
        backend=backend,
        start_method=start_method,
    )
    began = time.perf_counter()
    simulation = Simulation(config)
    result = simulation.run()
    total = time.perf_counter() - began
    rounds = result.round_seconds
    median = statistics.median(rounds[1:])
    extra: dict[str, Any] = {}
    if tuned is not None:
        extra = {
            "median_tuned_limit_s": tuned["median_limit_s"],
            "median_tuned_parallel_bare_s": tuned["median_parallel_s"],
            "tuned_efficiency": round(tuned["median_limit_s"] / median, 3),
        }
    return {
        "system": "fedloom",
        "workload": workload,
        "backend": backend,
        "start_method": getattr(simulation.backend, "start_method", None),
        "round_seconds": [round(s, 4) for s in rounds],
        "median_round_s": round(median, 4),
        "total_s": round(total, 3),
        "startup_s": round(result.startup_seconds, 3),
        "import_s": round(import_s, 3),
        "median_limit_s": limit["median_limit_s"],
        "limit_rounds_s": limit["round_limit_s"],
        "median_parallel_bare_s": limit["median_parallel_s"],
        "efficiency": round(limit["median_limit_s"] / median, 3),
        "x_limit": round(median / limit["median_limit_s"], 2),
        "target": TARGETS[workload],
        # the engine process (workers excluded); it counts the shared-memory global block
        # and worker slots the engine reads, so: torch + model x (3 + workers x slots)
        "engine_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    } | extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workload", choices=sorted(SPECS), required=True)
    parser.add_argument("--backend", default="process", choices=["process", "thread", "ray"])
    parser.add_argument(
        "--start-method", default="auto", choices=["auto", "spawn", "forkserver", "fork"]
    )
    parser.add_argument(
        "--tuned-limit", action="store_true", help="also the limit with fedloom's malloc settings"
    )
    args = parser.parse_args()
    print(json.dumps(run(args.workload, args.backend, args.start_method, args.tuned_limit)))


if __name__ == "__main__":
    main()
