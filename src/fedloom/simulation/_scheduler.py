"""A general task runner on the scheduler's admission.

A FIFO queue of tasks, admitted against a :class:`~fedloom.scheduler.ResourceLedger` and
run on a pool of threads, with out-of-memory failures re-queued under a raised estimate.

Private to the simulation, and exported nowhere: the simulation's rounds admit their
clients on the same ledger themselves (:mod:`fedloom.simulation._round`), and a pod queues
its tasks by count (``fedloom.pod._slots``), since its tasks declare no resources. It is kept,
with its tests, as the reference of the INIT → ... → FINISHED life that
:class:`~fedloom.scheduler.TaskStatus` names, until a runner needs it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, cast, runtime_checkable

from fedloom.errors import ConfigError, FedloomError
from fedloom.scheduler import (
    CPU_DEVICE,
    Reservation,
    ResourceEstimate,
    ResourceLedger,
    TaskStatus,
    check_retry_rules,
    is_device_out_of_memory,
    is_out_of_memory,
)
from fedloom.simulation._scheduler_report import Interrupt, SchedulerReport, TaskEntry

logger = logging.getLogger(__name__)

DEFAULT_MAX_WORKERS = 2
DEFAULT_MAX_RETRIES = 3
DEFAULT_GROWTH = 1.5
MAX_MESSAGE_CHARS = 2_000
"""Error messages in the report are cut to this length."""

StatusCallback = Callable[[str, TaskStatus], None]


@dataclass(eq=False)
class _Job:
    task: SchedulableTask
    estimate: ResourceEstimate
    status: TaskStatus = TaskStatus.INIT
    attempts: int = 0
    device: str | None = None
    seconds: float = 0.0
    interrupts: list[Interrupt] = field(default_factory=list)
    entry: TaskEntry | None = None


@dataclass(frozen=True)
class _Admitted:
    job: _Job
    system: Reservation
    device_part: ResourceEstimate | None  # to reserve on a GPU once loaded; None: CPU task


@runtime_checkable
class SchedulableTask(Protocol):
    """A unit of work the scheduler can admit: a virtual client's round, or any user task.

    Attributes:
        name: Shown in status callbacks and the report.
        group: Report file the task belongs to (for example the round).
        estimate: What the task expects to use; the scheduler raises its own copy after an
            out-of-memory error and never changes this attribute.

    Both steps may run again after an out-of-memory error, so they must be safe to repeat.
    """

    name: str
    group: str
    estimate: ResourceEstimate

    def load(self) -> None:
        """Read the task's data into system memory (``estimate.memory`` is reserved)."""
        ...

    def train(self, device: str) -> object:
        """Compute on ``device`` (``"cpu"`` or ``"cuda:<i>"``); the value goes in the report."""
        ...


class Scheduler:
    """Runs :class:`SchedulableTask` objects as resources allow, and reports on each.

    A task is admitted (LOADING) only once the ledger holds its system memory and CPUs;
    after ``load()`` it waits (WAITING) for its GPU memory on the device with the most
    room, then trains (TRAINING). Tasks without GPU memory, or on a machine without GPUs,
    run on ``"cpu"`` and reserve everything at admission. Admission is strictly in
    submission order, except that a task interrupted by an out-of-memory error goes back
    to the front of the queue with its estimate raised by ``growth``.

    Args:
        ledger: The resource account; ``None`` makes one for this machine.
        max_workers: Tasks running at the same time (at most).
        max_retries: Re-queues after out-of-memory errors before the task fails.
        growth: Factor on the memory that ran out, for the next try.
        on_status: Called with (task name, status) at each change, from the thread that
            made it, with no lock held (it may call :meth:`stop`); errors it raises are
            logged and ignored.
        clock: Seconds for the report's ``seconds`` (monotonic).

    Raises:
        ConfigError: ``max_workers`` < 1, ``max_retries`` < 0 or ``growth`` < 1.
    """

    def __init__(
        self,
        ledger: ResourceLedger | None = None,
        *,
        max_workers: int = DEFAULT_MAX_WORKERS,
        max_retries: int = DEFAULT_MAX_RETRIES,
        growth: float = DEFAULT_GROWTH,
        on_status: StatusCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers < 1:
            raise ConfigError(f"max_workers must be a whole number ≥ 1, got {max_workers!r}")
        check_retry_rules(max_retries, growth)
        self.ledger = ledger if ledger is not None else ResourceLedger()
        self.max_workers = max_workers
        self.max_retries = max_retries
        self.growth = float(growth)
        self._on_status = on_status
        self._clock = clock
        self._stop = threading.Event()
        self._cond = threading.Condition()
        self._admission = threading.Lock()  # one admitter at a time keeps the queue FIFO
        self._running = threading.Lock()
        self._queue: deque[_Job] = deque()
        self._jobs: list[_Job] = []
        self._admitting: _Job | None = None  # taken off the queue, waiting for memory
        self._unfinished = 0

    # --- public ---------------------------------------------------------------------

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called (a stopped scheduler stays stopped)."""
        return self._stop.is_set()

    def stop(self) -> None:
        """Take every queued task off the queue (EXITED); running tasks finish.

        Safe from any thread, including an ``on_status`` callback. Later calls of
        :meth:`run` exit their tasks at once.
        """
        self._stop.set()
        with self._cond:
            drained = list(self._queue)
            self._queue.clear()
            if self._admitting is not None and self._admitting.entry is None:
                drained.insert(0, self._admitting)
            for job in drained:
                self._finish_locked(job, TaskStatus.EXITED)
            self._cond.notify_all()
        self.ledger.wake_waiters()  # an admission waiting for memory gives up
        for job in drained:
            self._emit(job, TaskStatus.EXITED)

    def statistics(self) -> dict[str, int]:
        """Tasks of the current (or last) run by status now."""
        with self._cond:
            return dict(Counter(job.status.value for job in self._jobs))

    def run(self, tasks: Iterable[SchedulableTask]) -> SchedulerReport:
        """Run ``tasks`` to the end and report on each (task errors never escape).

        Raises:
            ConfigError: An item is not a :class:`SchedulableTask` (nothing is run).
            FedloomError: ``run`` is already running in another thread.
        """
        if not self._running.acquire(blocking=False):
            raise FedloomError("this Scheduler is already running; use one Scheduler per run")
        try:
            jobs = [_job(index, task) for index, task in enumerate(tasks)]
            with self._cond:
                self._jobs = jobs
                self._unfinished = len(jobs)
            for job in jobs:
                self._emit(job, TaskStatus.INIT)
            for job in jobs:
                self._emit(job, TaskStatus.AVAILABLE)
            with self._cond:
                self._queue.extend(jobs)
            workers = [
                threading.Thread(target=self._work, name=f"fedloom-scheduler-{i}", daemon=True)
                for i in range(min(self.max_workers, len(jobs)))
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            if self._queue:  # stop() came before the tasks were queued
                self.stop()
            return SchedulerReport(tuple(job.entry for job in jobs if job.entry is not None))
        finally:
            self._running.release()

    # --- workers --------------------------------------------------------------------

    def _work(self) -> None:
        while (admitted := self._admit_next()) is not None:
            self._execute(admitted)

    def _admit_next(self) -> _Admitted | None:
        with self._admission:
            while True:
                with self._cond:
                    while not self._queue and self._unfinished > 0 and not self._stop.is_set():
                        self._cond.wait()
                    if self._stop.is_set() or not self._queue:
                        return None
                    job = self._queue.popleft()
                    self._admitting = job  # still queued, as far as stop() is concerned
                reservation: Reservation | None = None
                failure: Exception | None = None
                try:
                    device = self.ledger.check(job.estimate)
                    if device == CPU_DEVICE:
                        system, device_part = job.estimate, None
                    else:
                        system = dataclasses.replace(job.estimate, gpu_memory=0)
                        device_part = ResourceEstimate(gpu_memory=job.estimate.gpu_memory, cpus=0)
                    reservation = self.ledger.reserve_unless(system, self._stop, CPU_DEVICE)
                except Exception as exc:  # a probe or ledger failure fails this task only
                    failure = exc
                with self._cond:
                    self._admitting = None
                    taken_by_stop = job.entry is not None
                if taken_by_stop:
                    if reservation is not None:
                        self.ledger.release(reservation)
                elif failure is not None:
                    self._fail(job, "admission", failure)
                elif reservation is None:  # stop() was under way while we waited for room
                    self._finish(job, TaskStatus.EXITED)
                else:
                    return _Admitted(job, reservation, device_part)

    def _execute(self, admitted: _Admitted) -> None:
        job = admitted.job
        job.attempts += 1
        job.device = CPU_DEVICE if admitted.device_part is None else None
        started = self._clock()
        on_device: Reservation | None = None
        stage = "load"
        try:
            self._emit(job, TaskStatus.LOADING)
            job.task.load()
            stage = "admission"
            self._emit(job, TaskStatus.WAITING)
            if admitted.device_part is not None:
                on_device = self.ledger.reserve(admitted.device_part)
                job.device = on_device.device
            stage = "train"
            self._emit(job, TaskStatus.TRAINING)
            result = job.task.train(job.device or CPU_DEVICE)
        except BaseException as exc:  # even SystemExit: a dead worker would hang run()
            self._release(admitted.system, on_device)
            job.seconds += self._clock() - started
            if stage != "admission" and is_out_of_memory(exc):
                self._interrupt(job, stage, exc)
            else:
                self._fail(job, stage, exc)
            return
        self._release(admitted.system, on_device)
        job.seconds += self._clock() - started
        self._finish(job, TaskStatus.FINISHED, result=result)

    def _release(self, system: Reservation, on_device: Reservation | None) -> None:
        if on_device is not None:
            self.ledger.release(on_device)
        self.ledger.release(system)

    def _interrupt(self, job: _Job, stage: str, exc: BaseException) -> None:
        job.interrupts.append(
            Interrupt(job.attempts, stage, job.device, job.estimate, type(exc).__name__, _text(exc))
        )
        logger.info("task %r ran out of memory at %s (try %d)", job.task.name, stage, job.attempts)
        self._emit(job, TaskStatus.INTERRUPT)
        if job.attempts > self.max_retries:
            message = f"out of memory on all {job.attempts} tries; last: {_text(exc)}"
            self._finish(
                job,
                TaskStatus.EXCEPTION,
                stage=stage,
                error_type=type(exc).__name__,
                message=message[:MAX_MESSAGE_CHARS],
            )
            return
        if self._stop.is_set():
            self._finish(job, TaskStatus.EXITED)
            return
        job.estimate = _grow(job.estimate, exc, stage, job.device, self.growth)
        self._emit(job, TaskStatus.AVAILABLE)
        # stop() may have come while AVAILABLE was being reported: then it exits here
        with self._cond:
            if not self._stop.is_set():
                self._queue.appendleft(job)
                self._cond.notify_all()
                return
            self._finish_locked(job, TaskStatus.EXITED)
        self._emit(job, TaskStatus.EXITED)

    # --- status and outcomes --------------------------------------------------------

    def _fail(self, job: _Job, stage: str, exc: BaseException) -> None:
        if stage != "admission":
            logger.info("task %r failed at %s: %r", job.task.name, stage, exc)
        self._finish(
            job,
            TaskStatus.EXCEPTION,
            stage=stage,
            error_type=type(exc).__name__,
            message=_text(exc),
        )

    def _finish(
        self,
        job: _Job,
        status: TaskStatus,
        *,
        result: object = None,
        stage: str | None = None,
        error_type: str | None = None,
        message: str | None = None,
    ) -> None:
        with self._cond:
            self._finish_locked(
                job, status, result=result, stage=stage, error_type=error_type, message=message
            )
        self._emit(job, status)

    def _finish_locked(
        self,
        job: _Job,
        status: TaskStatus,
        *,
        result: object = None,
        stage: str | None = None,
        error_type: str | None = None,
        message: str | None = None,
    ) -> None:
        job.entry = TaskEntry(
            name=job.task.name,
            group=job.task.group,
            status=status,
            device=job.device,
            attempts=job.attempts,
            estimate=job.estimate,
            interrupts=tuple(job.interrupts),
            seconds=job.seconds,
            result=result,
            stage=stage,
            error_type=error_type,
            message=message,
        )
        job.status = status
        self._unfinished -= 1
        self._cond.notify_all()

    def _emit(self, job: _Job, status: TaskStatus) -> None:
        job.status = status
        if self._on_status is None:
            return
        try:
            self._on_status(job.task.name, status)
        except BaseException:  # a callback must not kill a worker: run() would never return
            logger.exception("on_status callback failed for %r (%s)", job.task.name, status)


def _job(index: int, task: object) -> _Job:
    problems = [
        f"{attr} is not a string"
        for attr in ("name", "group")
        if not isinstance(getattr(task, attr, None), str)
    ]
    estimate = getattr(task, "estimate", None)
    if not isinstance(estimate, ResourceEstimate):
        problems.append("estimate is not a ResourceEstimate (use ResourceEstimate.of(...))")
    problems += [
        f"{step}() is missing"
        for step in ("load", "train")
        if not callable(getattr(task, step, None))
    ]
    if problems or not isinstance(estimate, ResourceEstimate):
        raise ConfigError(
            f"task #{index} ({getattr(task, 'name', task)!r}) is not a SchedulableTask: "
            + "; ".join(problems)
        )
    return _Job(task=cast(SchedulableTask, task), estimate=estimate)


def _grow(
    estimate: ResourceEstimate, exc: BaseException, stage: str, device: str | None, growth: float
) -> ResourceEstimate:
    """The estimate for the next try: more of the memory that ran out.

    Loading fills system memory; training on a GPU fills the GPU when the error is the
    GPU's, else system memory; training on the CPU may have filled either part, since
    both live in system memory there.
    """
    on_gpu = device is not None and device != CPU_DEVICE
    if stage == "load" or (on_gpu and not is_device_out_of_memory(exc)):
        return dataclasses.replace(estimate, memory=math.ceil(estimate.memory * growth))
    if on_gpu:
        return dataclasses.replace(estimate, gpu_memory=math.ceil(estimate.gpu_memory * growth))
    return estimate.raised(growth)


def _text(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:MAX_MESSAGE_CHARS]
