"""Ray backend: the same virtual clients on Ray actors, on one machine or on a cluster.

Each worker of the plan is a persistent Ray actor holding one
:class:`~fedloom.simulation._client.ClientRunner` (model and data cache) for the whole
simulation. Once per round the global parameters are put in Ray's object store
(:meth:`RayBackend.broadcast`): on one node that is shared memory, and every actor reads
the same copy without copying it. An actor trains a client inside its own slot and
returns the outcome (a msgpack-able body) with the update's flat numpy arrays; the engine
folds them straight from the object store (read-only, zero-copy on the driver's node) and
:meth:`RayBackend.release` drops the reference so Ray can free it.

Placement: actor options come from the clients' :class:`~fedloom.scheduler.ResourceEstimate`
(see :func:`ray_actor_options`), so Ray places actors where the CPUs, memory and GPUs are.
Each actor gets at most two jobs at a time (one training, one queued), like the process
pool: a slow actor never hoards the round's queue.

Stopping: :meth:`RayBackend.stop` calls ``ray.cancel`` on every job in flight. A queued
job is dropped by Ray; a running one sees ``ray.get_runtime_context().is_canceled()``
between batches and ends STOPPED. Jobs submitted after that end STOPPED without running.

A dead actor (killed, its node lost, out of memory) is replaced; its unfinished jobs are
re-run, at most ``max_job_retries`` times each, then reported WORKER_LOST.

Trust: Ray serialises with pickle internally, so a Ray cluster is one trust domain; run
simulations only on clusters you control. fedloom itself sends its actors JSON configs,
job bodies and numpy arrays only.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import threading
import time
import warnings
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from fedloom.errors import AbortReason, ConfigError, SimulationError
from fedloom.scheduler import ResourceEstimate
from fedloom.simulation._backend import BackendPlan, ClientFailure, ClientResult, FailureKind
from fedloom.simulation._client import ClientJob, ClientOutcome
from fedloom.simulation._ray_actor import Array, ClientActor, Reply, import_ray

if TYPE_CHECKING:
    from fedloom.simulation._settings import ClientResources

__all__ = ["DEFAULT_START_TIMEOUT", "RayBackend", "import_ray", "ray_actor_options"]

logger = logging.getLogger(__name__)

DEFAULT_START_TIMEOUT = 120.0
_IN_FLIGHT = 2  # jobs handed to one actor at a time: one training, one queued
_GPU_SHARE_DIGITS = 4  # Ray reads fractional GPUs to 1e-4
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def ray_actor_options(
    estimate: ResourceEstimate, device: str, *, workers_on_device: int = 1
) -> dict[str, Any]:
    """Ray actor options for one worker that runs clients needing ``estimate``.

    ``num_cpus`` is ``estimate.cpus``; ``memory`` (bytes, a placement reservation that Ray
    does not enforce) only when the estimate has some. On a CUDA device each actor asks
    for ``1 / workers_on_device`` of a GPU, so the plan's packing of workers onto GPUs is
    kept (two workers on ``cuda:0`` → ``num_gpus=0.5`` each). Ray has no notion of GPU
    memory: ``estimate.gpu_memory`` only steers the engine's own admission.

    Raises:
        ConfigError: ``workers_on_device`` is below 1.
    """
    if workers_on_device < 1:
        raise ConfigError(f"workers_on_device must be >= 1, got {workers_on_device}")
    options: dict[str, Any] = {"num_cpus": estimate.cpus}
    if estimate.memory > 0:
        options["memory"] = estimate.memory
    if device.startswith("cuda"):
        scale = 10**_GPU_SHARE_DIGITS
        options["num_gpus"] = max(1, math.floor(scale / workers_on_device)) / scale
    return options


# --- the driver side --------------------------------------------------------------------


@dataclass
class _Queued:
    job: ClientJob
    global_ref: Any  # the round's parameters in the object store


@dataclass
class _Actor:
    index: int
    device: str  # the plan's device label
    options: dict[str, Any]
    handle: Any = None
    running: dict[Any, _Queued] = field(default_factory=dict)  # object ref → job, in order
    restarts: int = 0


class RayBackend:
    """Runs client jobs on persistent Ray actors (see the module docstring).

    Args:
        address: The Ray cluster to join (``"ray://head:10001"``, ``"auto"``); ``None``
            follows ``RAY_ADDRESS`` or starts a local instance. Ignored when Ray is
            already initialised in this process: that instance is used and left running.
        resources: Per-client resources; their ``estimate`` sets the actors' options.
        init_options: More keyword arguments for ``ray.init`` (``num_cpus``,
            ``runtime_env``, ...).
        max_job_retries: How often a job lost with its actor is re-run before it is
            reported WORKER_LOST.
        actor_options: Ray actor options that override the computed ones
            (``scheduling_strategy``, custom ``resources``, ``num_gpus``, ...).
        start_timeout: Seconds :meth:`start` waits for every actor to be placed and built.
    """

    def __init__(
        self,
        *,
        address: str | None = None,
        resources: ClientResources | None = None,
        init_options: Mapping[str, Any] | None = None,
        max_job_retries: int = 2,
        actor_options: Mapping[str, Any] | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        self._address = address
        self._estimate = resources.estimate if resources is not None else ResourceEstimate()
        self._init_options = dict(init_options or {})
        self._max_job_retries = max_job_retries
        self._actor_options = dict(actor_options or {})
        self._start_timeout = start_timeout
        self._ray: Any = None
        self._remote: Any = None  # the actor class, registered with Ray once
        self._owns_ray = False
        self._plan: BackendPlan | None = None
        self._global_ref: Any = None
        self._actors: list[_Actor] = []
        self._queue: deque[_Queued] = deque()
        self._ready: deque[ClientResult] = deque()
        self._inflight: dict[Any, int] = {}  # object ref → actor index
        self._held: dict[int, Any] = {}  # token → the reply whose arrays back a result
        self._tokens = 0
        self._retries: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()  # _inflight is read by stop() from other threads
        self._stop = threading.Event()
        self._closed = False

    # --- contract -----------------------------------------------------------------------

    def start(self, plan: BackendPlan) -> None:
        """Join or start Ray, then build ``plan.workers`` actors and wait until all are up.

        Raises:
            ConfigError: Ray is not installed.
            SimulationError: Ray could not be started or reached, or an actor could not be
                placed or built within ``start_timeout`` (the error names why).
        """
        if self._plan is not None:
            return
        ray = import_ray()
        self._ray = ray
        if not ray.is_initialized():
            try:
                ray.init(address=self._address, **self._init_options)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self._address or os.environ.get("RAY_ADDRESS") or "a new local instance"
                raise SimulationError(
                    f"could not start or join Ray at {where}: {exc}; check the address and "
                    "that the cluster runs the same Ray and Python versions"
                ) from exc
            self._owns_ray = True
        self._plan = plan
        for index, device in enumerate(plan.devices):
            options = ray_actor_options(
                self._estimate, device, workers_on_device=plan.devices.count(device)
            )
            options.update(self._actor_options)
            actor = _Actor(index, device, options)
            self._actors.append(actor)
            self._spawn(actor)
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def broadcast(self, flats: Mapping[str, torch.Tensor]) -> None:
        """Put the round's parameters in the object store, once for every actor."""
        ray = self._require_ray()
        arrays = {name: flat.detach().cpu().numpy() for name, flat in flats.items()}
        self._global_ref = ray.put(arrays)

    def submit(self, jobs: Sequence[ClientJob]) -> None:
        """Queue jobs against the parameters of the last :meth:`broadcast`.

        Raises:
            SimulationError: nothing was broadcast yet.
        """
        if jobs and self._global_ref is None:
            raise SimulationError("broadcast the global parameters before submitting jobs")
        self._queue.extend(_Queued(job, self._global_ref) for job in jobs)
        self._dispatch()

    def next_result(self, timeout: float | None = None) -> ClientResult:
        """The next finished job (see :meth:`Backend.next_result`).

        Raises:
            TimeoutError: nothing finished within ``timeout`` seconds.
            SimulationError: no job is queued or running, or queued jobs name a device no
                actor runs on.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready:
            if not self._inflight:
                if self._queue:
                    job = self._queue[0].job
                    raise SimulationError(
                        f"client {job.client} must run on {job.device!r}, but the Ray "
                        f"actors run on {sorted({a.device for a in self._actors})}"
                    )
                raise SimulationError("no client job is queued or running")
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = self._require_ray().wait(list(self._inflight), num_returns=1, timeout=left)
            if not done:
                raise TimeoutError("no client finished in time")
            self._collect(done[0])
            self._dispatch()
        return self._ready.popleft()

    def release(self, result: ClientResult) -> None:
        """Drop the reply behind ``result.flats`` so Ray may free it."""
        self._held.pop(result.token, None)
        self._dispatch()

    def stop(self) -> None:
        """Cancel every job in flight (safe from any thread); later jobs end STOPPED."""
        self._stop.set()
        ray = self._ray
        if ray is None:
            return
        with self._lock:
            refs = list(self._inflight)
        for ref in refs:
            with contextlib.suppress(Exception):  # finished or already gone: nothing to do
                ray.cancel(ref)

    def close(self) -> None:
        """Kill the actors; shut Ray down only if :meth:`start` initialised it."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        ray = self._ray
        if ray is None:
            return
        for actor in self._actors:
            if actor.handle is not None:
                with contextlib.suppress(Exception):
                    ray.kill(actor.handle, no_restart=True)
                actor.handle = None
            actor.running.clear()
        with self._lock:
            self._inflight.clear()
        self._queue.clear()
        self._held.clear()
        self._global_ref = None
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()

    # --- for operators and tests --------------------------------------------------------

    def statistics(self) -> dict[str, Any]:
        """Actors, jobs queued and running, results held, actor restarts and job re-runs."""
        return {
            "actors": sum(1 for a in self._actors if a.handle is not None),
            "queued": len(self._queue),
            "running": len(self._inflight),
            "held": len(self._held),
            "restarts": sum(a.restarts for a in self._actors),
            "reruns": sum(self._retries.values()),
        }

    def actor_handles(self) -> list[Any]:
        """The live actors' handles, by worker index (``None`` while being replaced)."""
        return [actor.handle for actor in self._actors]

    def worker_resources(self, timeout: float = 30.0) -> list[dict[str, float]]:
        """What Ray assigned to each actor (``{"CPU": 1.0, "memory": ...}``), by index.

        Raises:
            SimulationError: the backend is not running.
        """
        ray = self._require_ray()
        handles = [a.handle for a in self._actors if a.handle is not None]
        return [
            dict(r)
            for r in ray.get([h.assigned_resources.remote() for h in handles], timeout=timeout)
        ]

    # --- internals ----------------------------------------------------------------------

    def _require_ray(self) -> Any:
        if self._ray is None or self._plan is None or self._closed:
            raise SimulationError("the Ray backend is not running: call start() first")
        return self._ray

    def _spawn(self, actor: _Actor) -> None:
        plan = self._plan
        assert plan is not None
        if self._remote is None:
            self._remote = self._ray.remote(ClientActor)
        actor.handle = self._remote.options(**actor.options).remote(
            plan.runner.to_config(), [list(group) for group in plan.layout.groups], actor.device
        )

    def _wait_ready(self) -> None:
        ray = self._ray
        refs = {actor.handle.ready.remote(): actor for actor in self._actors}
        done, pending = ray.wait(list(refs), num_returns=len(refs), timeout=self._start_timeout)
        for ref in done:
            actor = refs[ref]
            try:
                answer = ray.get(ref)
            except ray.exceptions.RayError as exc:
                raise SimulationError(
                    f"Ray actor {actor.index} ({actor.device}) could not start: {_cause(exc)}"
                ) from exc
            failure = answer.get("failure")
            if failure is not None:
                raise SimulationError(
                    f"Ray actor {actor.index} ({actor.device}) could not start: "
                    f"{failure['error_type']}: {failure['message']}"
                )
        if pending:
            actor = refs[pending[0]]
            raise SimulationError(
                f"{len(pending)} of {len(refs)} Ray actors were not placed within "
                f"{self._start_timeout:.0f} s; each asks for {actor.options} and the cluster "
                f"has {ray.available_resources()} free: lower num_parallels or the "
                "per-client resources, or add nodes"
            )

    def _dispatch(self) -> None:
        while self._queue:
            item = self._queue[0]
            if self._stop.is_set():
                self._queue.popleft()
                self._ready.append(
                    _failed(item.job, 0, FailureKind.STOPPED, "Stopped", "the simulation stopped")
                )
                continue
            candidates = [
                a
                for a in self._actors
                if a.handle is not None
                and len(a.running) < _IN_FLIGHT
                and item.job.device in (None, a.device)
            ]
            if not candidates:
                return
            actor = min(candidates, key=lambda a: (len(a.running), a.index))
            self._queue.popleft()
            ref = actor.handle.fit.remote(item.job.to_body(), item.global_ref)
            actor.running[ref] = item
            with self._lock:
                self._inflight[ref] = actor.index

    def _collect(self, ref: Any) -> None:
        ray = self._ray
        with self._lock:
            index = self._inflight.pop(ref)
        actor = self._actors[index]
        item = actor.running.pop(ref)
        try:
            reply = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            self._ready.append(
                _failed(item.job, index, FailureKind.STOPPED, "Stopped", "cancelled")
            )
        except ray.exceptions.RayActorError as exc:
            self._lost(actor, [item], exc)
        except ray.exceptions.RayTaskError as exc:
            self._ready.append(
                _failed(item.job, index, FailureKind.ERROR, type(exc.cause).__name__, _cause(exc))
            )
        except ray.exceptions.RayError as exc:  # the reply itself was lost (e.g. its node)
            self._requeue(item, index, exc)
        else:
            self._ready.append(self._result(item.job, index, reply))

    def _result(self, job: ClientJob, index: int, reply: Reply) -> ClientResult:
        body, arrays = reply
        failure = body.get("failure")
        if failure is not None:
            return ClientResult(job, index, failure=ClientFailure.from_body(failure))
        plan = self._plan
        assert plan is not None and arrays is not None
        self._tokens += 1
        self._held[self._tokens] = reply
        return ClientResult(
            job=job,
            worker=index,
            outcome=ClientOutcome.from_body(body["outcome"]),
            flats=_as_tensors(arrays),
            token=self._tokens,
        )

    def _lost(self, actor: _Actor, first: list[_Queued], exc: BaseException) -> None:
        """Replace a dead actor and re-run (or give up on) every job it had."""
        logger.warning("Ray actor %d died (%s); replacing it", actor.index, _cause(exc))
        with self._lock:
            for ref in actor.running:
                self._inflight.pop(ref, None)
        lost = first + list(actor.running.values())
        actor.running.clear()
        with contextlib.suppress(Exception):
            self._ray.kill(actor.handle, no_restart=True)
        actor.handle = None
        for item in reversed(lost):
            self._requeue(item, actor.index, exc)
        if not self._closed:
            actor.restarts += 1
            self._spawn(actor)

    def _requeue(self, item: _Queued, index: int, exc: BaseException) -> None:
        key = (item.job.client, item.job.round)
        self._retries[key] = self._retries.get(key, 0) + 1
        if self._retries[key] > self._max_job_retries:
            self._ready.append(
                _failed(
                    item.job,
                    index,
                    FailureKind.WORKER_LOST,
                    "WorkerLostError",
                    f"lost {self._retries[key]} times with its Ray actor: {_cause(exc)}",
                )
            )
        else:
            self._queue.appendleft(item)


def _failed(
    job: ClientJob, worker: int, kind: AbortReason, error_type: str, message: str
) -> ClientResult:
    return ClientResult(job, worker, failure=ClientFailure(kind, error_type, message))


def _as_tensors(arrays: Mapping[str, Array]) -> dict[str, torch.Tensor]:
    # Ray hands back read-only views of its object store; the engine only reads updates,
    # so wrapping them without a copy is safe and torch's warning about it is noise.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="The given NumPy array is not writable", category=UserWarning
        )
        return {name: torch.from_numpy(array) for name, array in arrays.items()}


def _cause(exc: BaseException) -> str:
    """One line on why a Ray call failed (Ray's own messages carry tracebacks and colours)."""
    cause = getattr(exc, "cause", None)
    text = str(cause if isinstance(cause, BaseException) else exc)
    lines = [line.strip() for line in _ANSI.sub("", text).splitlines() if line.strip()]
    return lines[0][:500] if lines else type(exc).__name__
