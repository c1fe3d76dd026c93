"""The spawn target of the process pool: one persistent worker, many clients.

The worker maps the global block and its own slots once, builds one
:class:`~fedloom.simulation._client.ClientRunner`, and then serves ``fit`` requests from its
pipe: copy the global parameters into the requested slot, train the client with the model
living in that slot, check the update, answer with a few numbers. No parameters and no
data travel through the pipe, and nothing is pickled after start-up (requests and answers
are msgpack). It never raises: every failure becomes an answer.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

import msgpack

__all__ = ["PRELOAD", "WorkerStart", "warm_up", "worker_main"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerStart:
    """What a worker is started with (pickled once, parent → its own child)."""

    index: int
    runner: Mapping[str, Any]  # RunnerPlan.to_config()
    layout: Any  # FlatLayout
    global_block: str
    slots: tuple[str, ...]
    device: str


class _StoppedError(Exception):
    """The stop event was set while a client trained."""


def encode(item: Mapping[str, Any]) -> bytes:
    return msgpack.packb(item, use_bin_type=True)


def decode(data: bytes) -> dict[str, Any]:
    item = msgpack.unpackb(data, raw=False)
    if not isinstance(item, dict):
        raise ValueError("a pool message must be a map")
    return item


def worker_main(start: WorkerStart, conn: Connection, stop: Event) -> None:
    """Serve fit requests until told to exit or the pipe closes. Never raises."""
    try:
        from fedloom.worker._allocator import keep_freed_memory
        from fedloom.worker._lifetime import die_with_parent

        die_with_parent(signal.SIGKILL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
        # a forked worker would run the parent's SIGTERM handler (the CLI's: stop the run)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        keep_freed_memory()  # no page faults per training step
        _serve(start, conn, stop)
    except (EOFError, OSError, KeyboardInterrupt):
        pass
    except BaseException as exc:
        with contextlib.suppress(OSError, ValueError):
            conn.send_bytes(encode({"op": "failed"} | _failure_body(exc)))


def _serve(start: WorkerStart, conn: Connection, stop: Event) -> None:
    from fedloom.simulation._client import ClientRunner, RunnerPlan
    from fedloom.simulation._shm import SharedBlock
    from fedloom.worker._threads import apply_thread_budget

    plan = RunnerPlan.from_config(start.runner)
    apply_thread_budget(plan.torch_threads)
    warm_up()
    runner = ClientRunner(plan, device=start.device)
    global_block = SharedBlock.attach(start.layout, start.global_block)
    slots = [SharedBlock.attach(start.layout, name) for name in start.slots]
    slot_views = [slot.views() for slot in slots]
    global_views = global_block.views()
    conn.send_bytes(encode({"op": "ready", "worker": start.index}))
    try:
        _loop(
            conn,
            stop,
            runner=runner,
            global_block=global_block,
            slots=slots,
            views=slot_views,
            global_views=global_views,
        )
    finally:
        del runner, slot_views, global_views
        for block in (global_block, *slots):
            block.close()


def _loop(
    conn: Connection,
    stop: Event,
    *,
    runner: Any,
    global_block: Any,
    slots: list[Any],
    views: list[dict[str, Any]],
    global_views: dict[str, Any],
) -> None:
    from fedloom.simulation._client import ClientJob

    def check_stop(_epoch: int, _batch: int, _loss: float) -> None:
        if stop.is_set():
            raise _StoppedError

    while True:
        request = decode(conn.recv_bytes())
        if request.get("op") == "exit":
            return
        results = []
        for item in request["items"]:
            slot_index = int(item["slot"])
            job = ClientJob.from_body(item["job"])
            reply: dict[str, Any] = {"slot": slot_index}
            try:
                if stop.is_set():
                    raise _StoppedError
                slot = slots[slot_index]
                slot.copy_from(global_block)
                outcome = runner.fit(
                    job, views[slot_index], on_batch=check_stop, global_params=global_views
                )
                if not slot.is_finite():
                    reply |= _non_finite()
                else:
                    reply["outcome"] = outcome.to_body()
            except _StoppedError:
                reply |= _stopped()
            except BaseException as exc:
                reply |= _failure_body(exc)
            results.append(reply)
        conn.send_bytes(encode({"op": "done", "results": results}))


def warm_up() -> None:
    """Import what the first optimizer step would import, before saying "ready".

    torch's optimizers import TorchDynamo on their first ``step()`` (about a second of
    CPU); doing it here keeps that out of the first round's timings. The hundreds of
    thousands of objects torch leaves behind are then frozen out of the garbage
    collector's reach, so no full collection rescans them in the middle of a round.
    """
    import gc

    import torch._dynamo  # noqa: F401

    gc.freeze()


PRELOAD = ("torch", "torch._dynamo", "fedloom.simulation._client", "fedloom.simulation._shm")
"""Modules a forkserver imports once, so every worker it forks starts warm."""


def _non_finite() -> dict[str, Any]:
    from fedloom.simulation._backend import ClientFailure

    return ClientFailure.non_finite().to_body()


def _stopped() -> dict[str, Any]:
    from fedloom.simulation._backend import ClientFailure, FailureKind

    message = "stopped by the simulation's stop event"
    return ClientFailure(FailureKind.STOPPED, "Stopped", message).to_body()


def _failure_body(exc: BaseException) -> dict[str, Any]:
    from fedloom.simulation._backend import ClientFailure

    logger.debug("worker failure: %s", "".join(traceback.format_exception_only(exc)).strip())
    return ClientFailure.of(exc).to_body()
