"""Fault injection: a protocol whose worker side fails on purpose, to test pods.

Importing this module registers the protocol ``fault``. A pod only runs it if its admin
approved this module as a plugin (``plugins = ["fedloom.testing._faults"]``): it is a test
tool, never loaded by fedloom itself.

Modes (``Fault(mode=...)``), on the pod's worker side:

- ``ok``: answer RESULTS with facts about the process that ran it (pid, whether it holds a
  network connection or the gRPC library, its torch / OpenMP / BLAS thread counts), then
  wait for TASK_COMPLETE;
- ``raise``: raise an exception; ``exit``: ``os._exit(3)``; ``kill``: SIGKILL itself;
- ``hang``: block the event loop for ``seconds`` (``time.sleep``);
- ``sleep``: wait ``seconds`` without blocking (a long, well-behaved task), then answer;
- ``allocate``: allocate ``megabytes`` of memory in steps, then answer.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import psutil

from fedloom.errors import ConfigError
from fedloom.protocols import ModellerContext, TaskProtocol, WorkerContext, register_protocol
from fedloom.session import ModellerMailbox, WorkerMailbox
from fedloom.wire import MessageType

MODES = ("ok", "raise", "exit", "kill", "hang", "sleep", "allocate")


@register_protocol
@dataclass(frozen=True)
class Fault(TaskProtocol[Any]):
    """A protocol whose worker side misbehaves as ``mode`` says (see the module docstring)."""

    name = "fault"

    mode: str = "ok"
    seconds: float = 0.0
    megabytes: int = 0
    timeout: float = 60.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"fault.mode must be one of {MODES}, got {self.mode!r}")

    def to_config(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "seconds": self.seconds,
            "megabytes": self.megabytes,
            "timeout": self.timeout,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        unknown = set(config) - {"mode", "seconds", "megabytes", "timeout"}
        if unknown:
            raise ConfigError(f"fault: unknown keys {sorted(unknown)}")
        return cls(
            mode=str(config.get("mode", "ok")),
            seconds=float(config.get("seconds", 0.0)),
            megabytes=int(config.get("megabytes", 0)),
            timeout=float(config.get("timeout", 60.0)),
        )

    async def run_modeller(self, mailbox: ModellerMailbox, context: ModellerContext) -> Any:
        await mailbox.broadcast(MessageType.INSTRUCTION, {"step": "go"})
        gathered = await mailbox.collect(MessageType.RESULTS, name="results", timeout=self.timeout)
        return {pod: reply.body for pod, reply in gathered.replies.items()}

    async def run_worker(self, mailbox: WorkerMailbox, context: WorkerContext) -> dict[str, Any]:
        await mailbox.receive(MessageType.INSTRUCTION)
        if self.mode == "raise":
            raise RuntimeError("injected failure")
        if self.mode == "exit":
            os._exit(3)
        if self.mode == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.mode == "hang":
            time.sleep(self.seconds)  # blocks the event loop on purpose
        if self.mode == "sleep":
            await asyncio.sleep(self.seconds)
        held: list[np.ndarray] = []
        if self.mode == "allocate":
            for _ in range(max(1, self.megabytes // 64)):
                held.append(np.ones(64 << 17, dtype=np.float64))  # 64 MiB, pages touched
                await asyncio.sleep(0.05)
        await mailbox.send(MessageType.RESULTS, _process_facts())
        await mailbox.receive(MessageType.TASK_COMPLETE)
        return {"mode": self.mode, "held_mb": 64 * len(held)}


def _process_facts() -> dict[str, Any]:
    import torch
    from threadpoolctl import threadpool_info

    process = psutil.Process()
    connections = [c for c in process.net_connections(kind="inet") if c.raddr]
    return {
        "pid": os.getpid(),
        "inet_connections": len(connections),
        "grpc_loaded": "grpc" in sys.modules,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "library_threads": sorted({int(pool["num_threads"]) for pool in threadpool_info()}),
    }
