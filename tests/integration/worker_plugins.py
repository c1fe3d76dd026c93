"""A protocol for pod isolation tests, imported by the task children as a plugin.

``failing``: the worker side waits for the modeller's instruction, then raises from a helper
with a recognisable name (:func:`explode_in_named_helper`): ``error = "runtime"`` a
RuntimeError, ``"torch-oom"`` ``torch.OutOfMemoryError``, ``"cuda-text"`` a RuntimeError
whose message says "CUDA out of memory" (as CUDA's allocator raises it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

import torch

from fedloom.protocols import ModellerContext, TaskProtocol, WorkerContext, register_protocol
from fedloom.session import ModellerMailbox, WorkerMailbox
from fedloom.wire import MessageType


def explode_in_named_helper(error: str) -> None:
    if error == "torch-oom":
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
    if error == "cuda-text":
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0)")
    raise RuntimeError("the named helper failed")


@register_protocol
@dataclass(frozen=True)
class Failing(TaskProtocol):
    """Fails on the worker side as ``error`` says (see the module docstring)."""

    name = "test_failing"

    error: str = "runtime"

    def to_config(self) -> dict[str, Any]:
        return {"error": self.error}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        return cls(error=str(config.get("error", "runtime")))

    async def run_modeller(self, mailbox: ModellerMailbox, context: ModellerContext) -> Any:
        await mailbox.broadcast(MessageType.INSTRUCTION, {"step": "go"})
        gathered = await mailbox.collect(MessageType.RESULTS, name="results", timeout=60.0)
        return {pod: reply.body for pod, reply in gathered.replies.items()}

    async def run_worker(self, mailbox: WorkerMailbox, context: WorkerContext) -> Any:
        await mailbox.receive(MessageType.INSTRUCTION)
        explode_in_named_helper(self.error)
        return None
