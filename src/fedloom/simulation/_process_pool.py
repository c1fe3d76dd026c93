"""Process-pool backend: persistent worker processes sharing parameters through memory.

One global block (the round's parameters, written once per round) and, per worker, a few
slots (each a whole model in shared memory; more of them for small models). A worker trains
a client *inside* a slot and answers with a few numbers; the engine folds the update
straight from the slot and releases it. Each worker has at most two messages of work at a
time (one running, one waiting in its pipe), so there is no idle gap between clients; when
clients take only milliseconds, a message carries several of them (guided by what is still
queued), so the per-message cost is paid per batch, not per client.

A worker that dies is replaced; the jobs it had not finished are re-run (at most
``max_job_retries`` times each, then reported WORKER_LOST).

Workers are forked when that is safe (start method ``auto``, see :func:`fork_hazard`):
a forked worker has torch imported already and is ready in about half the time of a
spawned one, which imports torch and TorchDynamo itself (~2 s on two cores). Otherwise
they are spawned: a fork copies only the calling thread, so locks that other threads
(gRPC's, Ray's, a progress bar's) hold at that moment stay locked in the child forever.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import Any

import torch

from fedloom.errors import ConfigError, SimulationError
from fedloom.simulation._backend import (
    START_METHODS,
    BackendPlan,
    ClientFailure,
    ClientResult,
    FailureKind,
)
from fedloom.simulation._client import ClientJob, ClientOutcome
from fedloom.simulation._pool_worker import PRELOAD, WorkerStart, decode, encode, worker_main
from fedloom.simulation._shm import SharedBlock

__all__ = ["ProcessPoolBackend", "fork_hazard", "slots_for"]

logger = logging.getLogger(__name__)

_MIN_SLOTS, _MAX_SLOTS = 3, 64
_SLOT_BUDGET = 32 << 20  # bytes of slots per worker for small models
_SHORT_JOB_SECONDS = 0.005  # clients shorter than this go several to a message
_MAX_BATCH = 32


def slots_for(model_bytes: int) -> int:
    """Slots per worker for a model of ``model_bytes``: three for big ones, up to 64 for small.

    Small slots are cheap to hold, and they let a worker take many short clients at once.
    """
    return max(_MIN_SLOTS, min(_MAX_SLOTS, _SLOT_BUDGET // max(1, model_bytes)))


_FORK_UNSAFE_MODULES = ("grpc", "ray")  # they run native threads once used
DEFAULT_START_TIMEOUT = 120.0
_IN_FLIGHT = 2  # messages of work per worker: one running, one waiting in its pipe


@dataclass
class _Worker:
    index: int
    device: str
    slots: list[SharedBlock]
    process: BaseProcess | None = None
    conn: Connection | None = None
    ready: bool = False
    free: list[int] = field(default_factory=list)
    running: dict[int, ClientJob] = field(default_factory=dict)  # slot → job sent
    messages: int = 0  # fit messages sent and not answered yet
    job_seconds: float | None = None  # moving average of its clients' training time
    restarts: int = 0


def fork_hazard(plan: BackendPlan) -> str | None:
    """Why forking workers for ``plan`` from this process now could hang or crash, or None.

    Forking is refused off Linux, for CUDA workers or once this process has initialised
    CUDA (CUDA does not survive a fork), for workers with more than one torch thread
    (OpenMP's thread pool does not either), while any other Python thread runs, and once
    gRPC or Ray is imported (their native threads).
    """
    if not sys.platform.startswith("linux"):
        return f"fork is only used on Linux (this is {sys.platform})"
    if any(device != "cpu" for device in plan.devices):
        return "CUDA cannot be used in a forked child"
    if torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        return "CUDA is initialised in this process (its driver threads do not survive a fork)"
    if plan.runner.torch_threads != 1:
        return "workers with several torch threads: OpenMP's pool does not survive a fork"
    if threading.active_count() > 1:
        names = [t.name for t in threading.enumerate() if t is not threading.current_thread()]
        return f"other threads are running: {', '.join(names)}"
    loaded = [name for name in _FORK_UNSAFE_MODULES if name in sys.modules]
    if loaded:
        return f"{' and '.join(loaded)} imported (native threads)"
    return None


class ProcessPoolBackend:
    """Persistent worker processes sharing parameters through memory; see the module docstring.

    ``start_method`` ``auto`` forks when :func:`fork_hazard` finds nothing, else spawns;
    ``spawn``, ``forkserver`` and ``fork`` force one.
    """

    def __init__(
        self,
        *,
        slots_per_worker: int | None = None,
        start_method: str = "auto",
        start_timeout: float = DEFAULT_START_TIMEOUT,
        max_job_retries: int = 2,
    ) -> None:
        if start_method not in START_METHODS:
            raise ConfigError(
                f"start_method must be one of {', '.join(START_METHODS)}, got {start_method!r}"
            )
        self.start_method = start_method
        self._auto = start_method == "auto"
        self._context: Any = None  # chosen at start, from the state of this process then
        self._slots_per_worker = slots_per_worker
        self._start_timeout = start_timeout
        self._max_job_retries = max_job_retries
        # a spawn-context event works in forked children too (not the other way round)
        self._stop = multiprocessing.get_context("spawn").Event()
        self._plan: BackendPlan | None = None
        self._global: SharedBlock | None = None
        self._workers: list[_Worker] = []
        self._queue: deque[ClientJob] = deque()
        self._ready_results: deque[ClientResult] = deque()
        self._retries: dict[tuple[int, int], int] = {}
        self._closed = False
        self._sent_messages = 0
        self._sent_jobs = 0

    # --- contract -----------------------------------------------------------------------

    def forks(self, plan: BackendPlan) -> bool:
        """Whether :meth:`start` will fork the workers (decided once, on the first call)."""
        if self._context is None:
            method = self.start_method
            if method == "auto":
                hazard = fork_hazard(plan)
                method = "spawn" if hazard else "fork"
                if hazard:
                    logger.debug("simulation workers are spawned: %s", hazard)
            self._context = multiprocessing.get_context(method)
            if method == "forkserver":
                self._context.set_forkserver_preload(list(PRELOAD))
            self.start_method = method
        return self.start_method == "fork"

    def start(self, plan: BackendPlan) -> None:
        if self._plan is not None:
            return
        self.forks(plan)
        self._plan = plan
        self._global = SharedBlock.create(plan.layout)
        count = self._slots_per_worker or slots_for(plan.layout.nbytes)
        for index, device in enumerate(plan.devices):
            slots = [SharedBlock.create(plan.layout) for _ in range(max(1, count))]
            worker = _Worker(index, device, slots, free=list(range(len(slots))))
            self._workers.append(worker)
            self._spawn(worker)
        deadline = time.monotonic() + self._start_timeout
        while not all(w.ready for w in self._workers):
            if not self._pump(deadline - time.monotonic(), starting=True):
                self.close()
                raise SimulationError(
                    f"simulation workers did not start within {self._start_timeout:.0f} s"
                )

    def broadcast(self, flats: Mapping[str, torch.Tensor]) -> None:
        self._require_global().copy_from(flats)

    def submit(self, jobs: Sequence[ClientJob]) -> None:
        self._queue.extend(jobs)
        self._dispatch()

    def next_result(self, timeout: float | None = None) -> ClientResult:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready_results:
            if not self._queue and not any(w.running for w in self._workers):
                raise SimulationError("no client job is queued or running")
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError("no client finished in time")
            self._pump(left)
        return self._ready_results.popleft()

    def release(self, result: ClientResult) -> None:
        worker = self._workers[result.worker]
        if result.flats is not None and result.token not in worker.free:
            worker.free.append(result.token)
        self._dispatch()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        for worker in self._workers:
            if worker.conn is not None:
                with contextlib.suppress(OSError, ValueError):
                    worker.conn.send_bytes(encode({"op": "exit"}))
        deadline = time.monotonic() + 5.0
        for worker in self._workers:
            process = worker.process
            if process is None:
                continue
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(5.0)
            if worker.conn is not None:
                worker.conn.close()
        for worker in self._workers:
            for slot in worker.slots:
                slot.close()
        if self._global is not None:
            self._global.close()

    def statistics(self) -> dict[str, Any]:
        """Workers alive, jobs queued and running, restarts, and jobs/messages sent."""
        return {
            "jobs_sent": self._sent_jobs,
            "messages_sent": self._sent_messages,
            "workers": sum(1 for w in self._workers if w.process and w.process.is_alive()),
            "queued": len(self._queue),
            "running": sum(len(w.running) for w in self._workers),
            "restarts": sum(w.restarts for w in self._workers),
        }

    def worker_pids(self) -> list[int | None]:
        """Process ids of the workers, by index (for tests and operators)."""
        return [w.process.pid if w.process else None for w in self._workers]

    # --- internals ----------------------------------------------------------------------

    def _require_global(self) -> SharedBlock:
        if self._global is None:
            raise SimulationError("the backend has not been started")
        return self._global

    def _spawn(self, worker: _Worker) -> None:
        plan = self._plan
        assert plan is not None
        context = self._context
        if self._auto and self.start_method == "fork" and fork_hazard(plan):
            # a replacement while a thread runs in this process now: fork is no longer safe
            context = multiprocessing.get_context("spawn")
        parent_conn, child_conn = context.Pipe()
        start = WorkerStart(
            index=worker.index,
            runner=plan.runner.to_config(),
            layout=plan.layout,
            global_block=self._require_global().name,
            slots=tuple(slot.name for slot in worker.slots),
            device=worker.device,
        )
        process = context.Process(
            target=worker_main,
            args=(start, child_conn, self._stop),
            name=f"fedloom-sim-worker-{worker.index}",
            daemon=True,
        )
        process.start()
        child_conn.close()
        worker.process, worker.conn, worker.ready = process, parent_conn, False

    def _dispatch(self) -> None:
        while self._queue:
            device = self._queue[0].device
            candidates = [
                w
                for w in self._workers
                if w.ready
                and w.free
                and w.messages < _IN_FLIGHT
                and w.conn is not None
                and device in (None, w.device)
            ]
            if not candidates:
                return
            worker = min(candidates, key=lambda w: (w.messages, len(w.running), w.index))
            items = []
            for _ in range(self._batch_size(worker)):
                if not self._queue or self._queue[0].device not in (None, worker.device):
                    break
                job = self._queue.popleft()
                slot = worker.free.pop(0)
                worker.running[slot] = job
                items.append({"slot": slot, "job": job.to_body()})
            assert worker.conn is not None
            worker.messages += 1
            self._sent_messages += 1
            self._sent_jobs += len(items)
            worker.conn.send_bytes(encode({"op": "fit", "items": items}))

    def _batch_size(self, worker: _Worker) -> int:
        """Clients per message: one, unless they are short enough for messages to matter.

        Then a share of what is queued (guided: large at first, small at the end, so
        workers finish together), bounded by the worker's free slots.
        """
        if worker.job_seconds is None or worker.job_seconds > _SHORT_JOB_SECONDS:
            return 1
        alive = sum(1 for w in self._workers if w.ready) or 1
        share = -(-len(self._queue) // (2 * alive))
        return max(1, min(len(worker.free), share, _MAX_BATCH))

    def _pump(self, timeout: float | None, *, starting: bool = False) -> bool:
        """Handle what the workers said within ``timeout``; False if nothing came."""
        waitables: dict[Any, _Worker] = {}
        for worker in self._workers:
            if worker.conn is not None:
                waitables[worker.conn] = worker
            if worker.process is not None:
                waitables[worker.process.sentinel] = worker
        ready = wait(list(waitables), None if timeout is None else max(0.0, timeout))
        if not ready:
            return False
        for handle in ready:
            worker = waitables[handle]
            if handle is worker.conn:
                self._read(worker, starting)
            elif worker.process is not None and not worker.process.is_alive():
                self._lost(worker, starting)
        self._dispatch()
        return True

    def _read(self, worker: _Worker, starting: bool) -> None:
        assert worker.conn is not None
        try:
            while worker.conn.poll():
                self._handle(worker, decode(worker.conn.recv_bytes()), starting)
        except (EOFError, OSError):
            self._lost(worker, starting)

    def _handle(self, worker: _Worker, item: dict[str, Any], starting: bool) -> None:
        op = item.get("op")
        if op == "ready":
            worker.ready = True
            return
        if op == "failed":
            failure = item.get("failure") or {}
            raise SimulationError(
                f"simulation worker {worker.index} could not start: "
                f"{failure.get('error_type')}: {failure.get('message')}"
            )
        worker.messages = max(0, worker.messages - 1)
        for result in item["results"]:
            self._ready_results.append(self._result(worker, result))

    def _result(self, worker: _Worker, item: dict[str, Any]) -> ClientResult:
        slot = int(item["slot"])
        job = worker.running.pop(slot)
        if "outcome" in item:
            outcome = ClientOutcome.from_body(item["outcome"])
            last = worker.job_seconds
            worker.job_seconds = (
                outcome.seconds if last is None else 0.8 * last + 0.2 * (outcome.seconds)
            )
            return ClientResult(
                job=job,
                worker=worker.index,
                outcome=outcome,
                flats=worker.slots[slot].flats,
                token=slot,
            )
        worker.free.append(slot)
        failure = ClientFailure.from_body(item.get("failure") or {})
        return ClientResult(job=job, worker=worker.index, failure=failure)

    def _lost(self, worker: _Worker, starting: bool) -> None:
        process = worker.process
        if process is None or process.is_alive():
            return
        process.join()
        code = process.exitcode
        logger.warning("simulation worker %d exited (code %s); replacing it", worker.index, code)
        if worker.conn is not None:
            worker.conn.close()
        worker.process, worker.conn, worker.ready = None, None, False
        worker.messages = 0
        if starting:
            raise SimulationError(
                f"simulation worker {worker.index} exited with code {code} while starting"
            )
        lost = [worker.running[slot] for slot in sorted(worker.running)]
        worker.free.extend(worker.running)
        worker.running.clear()
        requeue: list[ClientJob] = []
        for job in lost:
            key = (job.client, job.round)
            self._retries[key] = self._retries.get(key, 0) + 1
            if self._retries[key] > self._max_job_retries:
                self._ready_results.append(
                    ClientResult(
                        job=job,
                        worker=worker.index,
                        failure=ClientFailure(
                            FailureKind.WORKER_LOST,
                            "WorkerLostError",
                            f"worker {worker.index} died {self._retries[key]} times on it",
                        ),
                    )
                )
            else:
                requeue.append(job)
        self._queue.extendleft(reversed(requeue))
        if not self._closed:
            worker.restarts += 1
            self._spawn(worker)
