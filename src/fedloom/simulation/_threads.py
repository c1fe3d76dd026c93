"""Thread-pool backend: the same client code in threads of the engine's process.

For free-threaded Python, or clients that mostly wait (I/O, a remote service): no
processes to start, no shared memory; each thread keeps its own runner (model) and slots.
On a GIL build, torch still releases the GIL inside its kernels, so CPU-bound clients
overlap partly. Threads share torch's one global generator, so models with random layers
(dropout) train one client at a time here, which keeps results bit-identical to the
process pool at the cost of parallelism.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from fedloom.errors import AbortReason, SimulationError
from fedloom.simulation._backend import BackendPlan, ClientFailure, ClientResult, FailureKind
from fedloom.simulation._client import ClientJob, ClientRunner
from fedloom.simulation._shm import all_finite

__all__ = ["ThreadPoolBackend"]

_SLOTS = 2


class _StoppedError(Exception):
    pass


@dataclass
class _Lane:
    index: int
    runner: ClientRunner
    slots: list[dict[str, torch.Tensor]]
    inbox: queue.SimpleQueue[tuple[int, ClientJob] | None] = field(
        default_factory=queue.SimpleQueue
    )
    free: list[int] = field(default_factory=list)
    running: int = 0
    thread: threading.Thread | None = None


class ThreadPoolBackend:
    """See the module docstring."""

    def __init__(self) -> None:
        self._plan: BackendPlan | None = None
        self._global: dict[str, torch.Tensor] = {}
        self._lanes: list[_Lane] = []
        self._queue: deque[ClientJob] = deque()
        self._results: queue.SimpleQueue[ClientResult] = queue.SimpleQueue()
        self._outstanding = 0
        self._stop = threading.Event()

    def start(self, plan: BackendPlan) -> None:
        if self._plan is not None:
            return
        self._plan = plan
        torch.set_num_threads(plan.runner.torch_threads)
        self._global = plan.layout.zeros()
        for index, device in enumerate(plan.devices):
            slots = [
                {name: torch.zeros_like(flat) for name, flat in self._global.items()}
                for _ in range(_SLOTS)
            ]
            runner = ClientRunner(plan.runner, device=device)
            runner.exclusive_rng = runner.draws_random_numbers
            lane = _Lane(index, runner, slots)
            lane.free = list(range(_SLOTS))
            lane.thread = threading.Thread(
                target=self._serve, args=(lane,), name=f"fedloom-sim-{index}", daemon=True
            )
            self._lanes.append(lane)
            lane.thread.start()

    def broadcast(self, flats: Mapping[str, torch.Tensor]) -> None:
        for name, flat in self._global.items():
            flat.copy_(flats[name])

    def submit(self, jobs: Sequence[ClientJob]) -> None:
        self._queue.extend(jobs)
        self._outstanding += len(jobs)
        self._dispatch()

    def next_result(self, timeout: float | None = None) -> ClientResult:
        if self._outstanding == 0:
            raise SimulationError("no client job is queued or running")
        try:
            result = self._results.get(timeout=timeout)
        except queue.Empty as exc:
            raise TimeoutError("no client finished in time") from exc
        self._outstanding -= 1
        lane = self._lanes[result.worker]
        lane.running -= 1
        if result.flats is None:
            lane.free.append(result.token)
        self._dispatch()
        return result

    def release(self, result: ClientResult) -> None:
        lane = self._lanes[result.worker]
        if result.flats is not None and result.token not in lane.free:
            lane.free.append(result.token)
        self._dispatch()

    def stop(self) -> None:
        self._stop.set()

    def close(self) -> None:
        self._stop.set()
        for lane in self._lanes:
            lane.inbox.put(None)
        for lane in self._lanes:
            if lane.thread is not None:
                lane.thread.join(10.0)

    def _dispatch(self) -> None:
        while self._queue:
            job = self._queue[0]
            lanes = [
                lane
                for lane in self._lanes
                if lane.free and lane.running < 2 and job.device in (None, lane.runner.device_name)
            ]
            if not lanes:
                return
            lane = min(lanes, key=lambda item: (item.running, item.index))
            slot = lane.free.pop(0)
            lane.running += 1
            lane.inbox.put((slot, self._queue.popleft()))

    def _serve(self, lane: _Lane) -> None:
        plan = self._plan
        assert plan is not None

        def check_stop(_epoch: int, _batch: int, _loss: float) -> None:
            if self._stop.is_set():
                raise _StoppedError

        while (item := lane.inbox.get()) is not None:
            slot_index, job = item
            flats = lane.slots[slot_index]
            try:
                if self._stop.is_set():
                    raise _StoppedError
                for name, flat in flats.items():
                    flat.copy_(self._global[name])
                outcome = lane.runner.fit(
                    job,
                    plan.layout.views(flats),
                    on_batch=check_stop,
                    global_params=(
                        plan.layout.views(self._global) if lane.runner.needs_global else None
                    ),
                )
                if not all_finite(flats):
                    raise _NonFiniteError
                result = ClientResult(job, lane.index, outcome, flats, token=slot_index)
            except _StoppedError:
                result = _failed(job, lane.index, slot_index, FailureKind.STOPPED, "Stopped")
            except _NonFiniteError:
                failure = ClientFailure.non_finite()
                result = ClientResult(job, lane.index, failure=failure, token=slot_index)
            except Exception as exc:
                failure = ClientFailure.of(exc)
                result = ClientResult(job, lane.index, failure=failure, token=slot_index)
            self._results.put(result)


class _NonFiniteError(Exception):
    pass


def _failed(  # noqa: PLR0917 - private shorthand
    job: ClientJob, lane: int, slot: int, kind: AbortReason, error_type: str, message: str = ""
) -> ClientResult:
    return ClientResult(job, lane, failure=ClientFailure(kind, error_type, message), token=slot)
