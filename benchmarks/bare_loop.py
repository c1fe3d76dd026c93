"""The "bare loop" limit of the standard simulation workloads (docs/benchmarks.md).

The same local training as a framework would run for the same clients, in this one plain
process: plain torch, no fedloom, no serialisation, no IPC. Per round, the seconds each
sampled client spends training are summed and divided by the number of cores (2): the
best any framework could do per round on this machine. FedAvg is applied between rounds
so each round trains from the same kind of parameters a framework would send.

    python benchmarks/bare_loop.py --workload W1
prints one JSON line: {"workload", "round_limit_s", "median_limit_s", "cores"}.

With ``--parallel`` it also measures what two plain torch processes achieve on this
machine: each trains every other sampled client of a round, the round lasting as long as
the slower one ("parallel_round_s"). On machines whose two cores are not equally fast
under load, this is below the ideal that the limit assumes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

CORES = 2


@dataclass(frozen=True)
class Workload:
    name: str
    clients: int
    rounds: int
    samples: int
    shape: tuple[int, ...]
    batch_size: int
    build: Callable[[], nn.Module]
    sampled: Callable[[int], list[int]]
    median_from: int  # first round (0-based) of the median window


def _mlp(*sizes: int) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        for a, b in itertools.pairwise(sizes[:-1]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(sizes[-2], sizes[-1]))
        return nn.Sequential(*layers)

    return build


def _cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 8 * 8, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    )


WORKLOADS = {
    "W1": Workload(
        "W1", 100, 5, 32, (64,), 16, _mlp(64, 32, 10), lambda r: list(range(100)), median_from=1
    ),
    "W2": Workload(
        "W2",
        20,
        3,
        256,
        (3, 32, 32),
        32,
        _cnn,
        lambda r: sorted((r * 10 + i) % 20 for i in range(10)),
        median_from=1,
    ),
    "W3": Workload(
        "W3",
        8,
        3,
        16,
        (1024,),
        16,
        _mlp(1024, 4096, 4096, 10),
        lambda r: list(range(8)),
        median_from=1,
    ),
}


def client_data(workload: Workload, client: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + client)
    x = torch.randn((workload.samples, *workload.shape), generator=g)
    y = torch.randint(0, 10, (workload.samples,), generator=g)
    return x, y


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.0)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for start in range(0, len(x), batch_size):  # fixed order, 1 epoch
        optimizer.zero_grad()
        loss = loss_fn(model(x[start : start + batch_size]), y[start : start + batch_size])
        loss.backward()
        optimizer.step()


def run(name: str) -> dict[str, object]:
    torch.set_num_threads(1)
    workload = WORKLOADS[name]
    torch.manual_seed(0)
    model = workload.build()
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    data = {c: client_data(workload, c) for c in range(workload.clients)}
    limits: list[float] = []
    for round_index in range(workload.rounds):
        busy = 0.0
        sums = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in global_state.items()}
        total = 0
        for client in workload.sampled(round_index):
            x, y = data[client]
            model.load_state_dict(global_state)
            began = time.perf_counter()
            train(model, x, y, workload.batch_size)
            busy += time.perf_counter() - began
            for key, value in model.state_dict().items():
                sums[key] += len(x) * value.double()
            total += len(x)
        global_state = {k: (s / total).to(global_state[k].dtype) for k, s in sums.items()}
        limits.append(busy / CORES)
    window = limits[workload.median_from :]
    return {
        "workload": name,
        "round_limit_s": [round(v, 4) for v in limits],
        "median_limit_s": round(statistics.median(window), 4),
        "cores": CORES,
    }


def _parallel_worker(name: str, index: int, barrier: Any, out: Any) -> None:
    torch.set_num_threads(1)
    workload = WORKLOADS[name]
    torch.manual_seed(0)
    model = workload.build()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    data = {c: client_data(workload, c) for c in range(workload.clients)}
    for round_index in range(workload.rounds):
        barrier.wait()
        busy = 0.0
        for client in workload.sampled(round_index)[index::CORES]:
            model.load_state_dict(state)
            began = time.perf_counter()
            train(model, *data[client], workload.batch_size)
            busy += time.perf_counter() - began
        out.put((round_index, busy))


def run_parallel(name: str) -> dict[str, object]:
    """Two plain processes, every other client each (see the module docstring)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, out = context.Barrier(CORES), context.Queue()
    processes = [
        context.Process(target=_parallel_worker, args=(name, i, barrier, out)) for i in range(CORES)
    ]
    for process in processes:
        process.start()
    workload = WORKLOADS[name]
    busy: dict[int, float] = {}
    for _ in range(workload.rounds * CORES):
        round_index, seconds = out.get()
        busy[round_index] = max(busy.get(round_index, 0.0), seconds)
    for process in processes:
        process.join()
    rounds = [busy[r] for r in range(workload.rounds)]
    return {
        "parallel_round_s": [round(v, 4) for v in rounds],
        "median_parallel_s": round(statistics.median(rounds[workload.median_from :]), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workload", choices=sorted(WORKLOADS), required=True)
    parser.add_argument("--parallel", action="store_true", help="also two plain processes")
    args = parser.parse_args()
    result = run(args.workload)
    if args.parallel:
        result |= run_parallel(args.workload)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
