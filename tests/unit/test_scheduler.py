"""The resource ledger and the scheduler, with real threads and simulated budgets.

Budgets are in bytes far below this machine's free memory, so the budget is the binding
limit; GPUs exist only as ``ResourceBudget.device_memory`` entries (this machine may have
none). Tasks measure what is really running at once through a shared meter.
"""

from __future__ import annotations

import json
import math
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from fedloom.errors import ConfigError, FedloomError, InsufficientResourcesError
from fedloom.scheduler import (
    Reservation,
    ResourceBudget,
    ResourceEstimate,
    ResourceLedger,
    TaskStatus,
)
from fedloom.simulation._scheduler import SchedulableTask, Scheduler
from fedloom.simulation._scheduler_report import SchedulerReport

WAIT = 10.0
"""Seconds a test waits for another thread before it fails instead of hanging."""

GPUS = {"cuda:0": 1000, "cuda:1": 2000}


class Machine:
    """A machine of fixed size, for the cases the real one cannot be made to show:
    a known free memory (to check the margin) and GPUs with less free memory than the
    budget. Implements the ResourceProbe contract; it stands in for psutil and torch."""

    def __init__(self, memory: int, cpus: float = 4.0, gpus: dict[str, int] | None = None):
        self.memory = memory
        self.cpus = cpus
        self.gpus = dict(gpus or {})
        self.device_lookups = 0

    def available_memory(self) -> int:
        return self.memory

    def cpu_count(self) -> float:
        return self.cpus

    def devices(self) -> list[str]:
        self.device_lookups += 1
        return ["cpu", *self.gpus]

    def free_device_memory(self, device: str) -> int | None:
        return self.gpus.get(device)


class Meter:
    """Amounts in use right now per key, and the most seen at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()

    def add(self, key: str, amount: int) -> None:
        with self.lock:
            self.now[key] += amount
            self.peak[key] = max(self.peak[key], self.now[key])

    def remove(self, key: str, amount: int) -> None:
        with self.lock:
            self.now[key] -= amount


@dataclass
class Job:
    """A schedulable task whose steps can fail on cue and report what they hold."""

    name: str
    estimate: ResourceEstimate = field(default_factory=lambda: ResourceEstimate(100, cpus=0.1))
    group: str = "round-1"
    load_errors: list[BaseException] = field(default_factory=list)
    train_errors: list[BaseException] = field(default_factory=list)
    result: object = None
    meter: Meter | None = None
    during_train: Callable[[Job, str], None] | None = None
    log: list[str] | None = None
    devices: list[str] = field(default_factory=list)
    dwell: float = 0.0  # seconds train() holds its memory, so that tasks overlap

    def load(self) -> None:
        if self.log is not None:
            self.log.append(self.name)
        if self.load_errors:
            raise self.load_errors.pop(0)
        if self.meter is not None:
            self.meter.add("memory", self.estimate.memory)

    def train(self, device: str) -> object:
        self.devices.append(device)
        gpu = self.estimate.gpu_memory if device != "cpu" else 0
        try:
            if self.meter is not None:
                self.meter.add(device, gpu)
            if self.during_train is not None:
                self.during_train(self, device)
            time.sleep(self.dwell)
            if self.train_errors:
                raise self.train_errors.pop(0)
            return self.result
        finally:
            if self.meter is not None:
                self.meter.remove(device, gpu)
                self.meter.remove("memory", self.estimate.memory)


def ledger(
    memory: int = 1000, gpus: dict[str, int] | None = None, cpus: float = 2
) -> ResourceLedger:
    return ResourceLedger(ResourceBudget(memory=memory, cpus=cpus, device_memory=gpus))


def statuses() -> tuple[dict[str, list[TaskStatus]], Callable[[str, TaskStatus], None]]:
    seen: dict[str, list[TaskStatus]] = {}
    lock = threading.Lock()

    def on_status(name: str, status: TaskStatus) -> None:
        with lock:
            seen.setdefault(name, []).append(status)

    return seen, on_status


# --- the ledger -------------------------------------------------------------------------


def test_ledger_never_admits_past_its_limits_under_many_threads() -> None:
    book = ResourceLedger(ResourceBudget(memory=1000, cpus=1.0, device_memory=GPUS))
    meter = Meter()
    errors: list[BaseException] = []

    def churn(seed: int) -> None:
        rng = random.Random(seed)
        held: list[Reservation] = []
        try:
            for _ in range(200):
                if held and rng.random() < 0.5:
                    reservation = held.pop(rng.randrange(len(held)))
                    meter.remove("memory", reservation.estimate.memory)
                    meter.remove(reservation.device, reservation.estimate.gpu_memory)
                    meter.remove("cpus", round(reservation.estimate.cpus * 100))
                    book.release(reservation)
                    continue
                estimate = ResourceEstimate(
                    memory=rng.randint(1, 400),
                    gpu_memory=rng.choice([0, rng.randint(1, 900)]),
                    cpus=rng.choice([0.05, 0.1, 0.3]),
                )
                if rng.random() < 0.7:
                    got = book.try_reserve(estimate)
                else:
                    try:
                        got = book.reserve(estimate, timeout=0.002)
                    except TimeoutError:
                        got = None
                if got is not None:
                    meter.add("memory", estimate.memory)
                    meter.add(got.device, estimate.gpu_memory)
                    meter.add("cpus", round(estimate.cpus * 100))
                    held.append(got)
            for reservation in held:
                meter.remove("memory", reservation.estimate.memory)
                meter.remove(reservation.device, reservation.estimate.gpu_memory)
                meter.remove("cpus", round(reservation.estimate.cpus * 100))
                book.release(reservation)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=churn, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT * 6)
    assert not errors
    assert 0 < meter.peak["memory"] <= 1000
    assert meter.peak["cpus"] <= 100
    assert meter.peak["cuda:0"] <= 1000
    assert meter.peak["cuda:1"] <= 2000
    assert meter.peak["cuda:0"] > 0 and meter.peak["cuda:1"] > 0
    snapshot = book.snapshot()
    assert snapshot["memory"] == {"reserved": 0, "limit": 1000}
    assert snapshot["reservations"] == 0


def test_try_reserve_waits_its_turn_and_release_is_idempotent() -> None:
    book = ledger(memory=1000)
    first = book.try_reserve(ResourceEstimate(memory=600, cpus=0.5))
    assert first is not None and first.device == "cpu"
    assert book.try_reserve(ResourceEstimate(memory=500, cpus=0.5)) is None
    book.release(first)
    book.release(first)  # a second release must not free memory it does not hold
    second = book.try_reserve(ResourceEstimate(memory=1000, cpus=0.5))
    assert second is not None
    assert book.try_reserve(ResourceEstimate(memory=1, cpus=0)) is None
    assert book.snapshot()["memory"] == {"reserved": 1000, "limit": 1000}


def test_cpus_are_a_limit_too() -> None:
    book = ledger(memory=1000, cpus=1.0)
    held = [book.try_reserve(ResourceEstimate(memory=1, cpus=0.1)) for _ in range(10)]
    assert all(held)
    assert book.try_reserve(ResourceEstimate(memory=1, cpus=0.1)) is None
    for reservation in held:
        assert reservation is not None
        book.release(reservation)
    assert book.snapshot()["cpus"] == {"reserved": 0.0, "limit": 1.0}


def test_a_reservation_from_another_ledger_is_refused() -> None:
    mine, theirs = ledger(), ledger()
    reservation = theirs.try_reserve(ResourceEstimate(memory=10, cpus=0.1))
    assert reservation is not None
    with pytest.raises(ConfigError, match="another ResourceLedger"):
        mine.release(reservation)


@pytest.mark.parametrize(
    ("estimate", "words"),
    [
        (ResourceEstimate(memory=1001, cpus=0.1), ["memory", "1001 B", "1000 B"]),
        (ResourceEstimate(memory=1, cpus=3), ["3 CPUs", "at most 2"]),
        (ResourceEstimate(memory=600, gpu_memory=500, cpus=0.1), ["1.1 KiB", "memory"]),
    ],
)
def test_an_estimate_that_could_never_fit_raises(
    estimate: ResourceEstimate, words: list[str]
) -> None:
    book = ledger(memory=1000, cpus=2)
    for call in (book.try_reserve, book.reserve, book.check):
        with pytest.raises(InsufficientResourcesError) as caught:
            call(estimate)
        for word in words:
            assert word in str(caught.value)
    assert book.snapshot()["reservations"] == 0


def test_gpu_memory_is_charged_to_system_memory_on_the_cpu() -> None:
    book = ledger(memory=1000)
    reservation = book.try_reserve(ResourceEstimate(memory=300, gpu_memory=400, cpus=0.1))
    assert reservation is not None and reservation.device == "cpu"
    assert book.snapshot()["memory"] == {"reserved": 700, "limit": 1000}


def test_reserve_blocks_until_another_thread_releases() -> None:
    book = ledger(memory=1000)
    held = book.reserve(ResourceEstimate(memory=800, cpus=0.1))
    got: list[Reservation] = []
    waiter = threading.Thread(
        target=lambda: got.append(book.reserve(ResourceEstimate(500, 0, 0.1)))
    )
    waiter.start()
    waiter.join(0.05)
    assert not got  # still waiting: 800 + 500 > 1000
    book.release(held)
    waiter.join(WAIT)
    assert len(got) == 1
    assert book.snapshot()["memory"] == {"reserved": 500, "limit": 1000}


def test_reserve_gives_up_after_its_timeout() -> None:
    book = ledger(memory=1000)
    book.reserve(ResourceEstimate(memory=1000, cpus=0.1))
    with pytest.raises(TimeoutError, match="did not fit"):
        book.reserve(ResourceEstimate(memory=1, cpus=0.1), timeout=0.01)


def test_reserve_unless_returns_none_once_cancelled() -> None:
    book = ledger(memory=1000)
    book.reserve(ResourceEstimate(memory=1000, cpus=0.1))
    cancel = threading.Event()
    got: list[Reservation | None] = []
    waiter = threading.Thread(
        target=lambda: got.append(book.reserve_unless(ResourceEstimate(10, 0, 0.1), cancel))
    )
    waiter.start()
    cancel.set()
    book.wake_waiters()
    waiter.join(WAIT)
    assert got == [None]
    assert book.snapshot()["reservations"] == 1


def test_device_choice_takes_the_gpu_with_most_room() -> None:
    book = ledger(memory=10_000, gpus=GPUS)
    assert book.devices() == ["cpu", "cuda:0", "cuda:1"]
    first = book.try_reserve(ResourceEstimate(memory=1, gpu_memory=900, cpus=0.1))
    assert first is not None and first.device == "cuda:1"  # 2000 free against 1000
    second = book.try_reserve(ResourceEstimate(memory=1, gpu_memory=900, cpus=0.1))
    assert second is not None and second.device == "cuda:1"  # 1100 left against 1000
    third = book.try_reserve(ResourceEstimate(memory=1, gpu_memory=900, cpus=0.1))
    assert third is not None and third.device == "cuda:0"
    assert book.try_reserve(ResourceEstimate(memory=1, gpu_memory=900, cpus=0.1)) is None
    assert book.try_reserve(ResourceEstimate(memory=1, cpus=0.1)) is not None  # cpu: no gpu
    assert book.snapshot()["devices"] == {
        "cuda:0": {"reserved": 900, "limit": 1000},
        "cuda:1": {"reserved": 1800, "limit": 2000},
    }
    book.release(first)
    fourth = book.try_reserve(ResourceEstimate(memory=1, gpu_memory=900, cpus=0.1))
    assert fourth is not None and fourth.device == "cuda:1"


def test_device_choice_skips_gpus_too_small_and_honours_an_explicit_device() -> None:
    book = ledger(memory=10_000, gpus=GPUS)
    big = book.try_reserve(ResourceEstimate(memory=1, gpu_memory=1500, cpus=0.1))
    assert big is not None and big.device == "cuda:1"
    assert book.try_reserve(ResourceEstimate(memory=1, gpu_memory=1500, cpus=0.1)) is None
    explicit = book.try_reserve(ResourceEstimate(memory=1, gpu_memory=10, cpus=0.1), "cuda:0")
    assert explicit is not None and explicit.device == "cuda:0"
    on_cpu = book.try_reserve(ResourceEstimate(memory=1, gpu_memory=10, cpus=0.1), "cpu")
    assert on_cpu is not None and on_cpu.device == "cpu"
    with pytest.raises(InsufficientResourcesError, match="cuda:1"):
        book.try_reserve(ResourceEstimate(memory=1, gpu_memory=2001, cpus=0.1))
    with pytest.raises(InsufficientResourcesError, match="cuda:0"):
        book.try_reserve(ResourceEstimate(memory=1, gpu_memory=1001, cpus=0.1), "cuda:0")
    with pytest.raises(ConfigError, match=r"unknown device 'cuda:7'.*cpu, cuda:0, cuda:1"):
        book.try_reserve(ResourceEstimate(memory=1, cpus=0.1), "cuda:7")


def test_a_ledger_limited_to_some_gpus_places_work_only_there() -> None:
    budget = ResourceBudget(memory=10_000, cpus=2, device_memory=GPUS)
    only_first = ResourceLedger(budget, gpus=["cuda:0"])
    assert only_first.devices() == ["cpu", "cuda:0"]
    placed = only_first.try_reserve(ResourceEstimate(memory=1, gpu_memory=900, cpus=0.1))
    assert placed is not None and placed.device == "cuda:0"  # cuda:1 has more room
    with pytest.raises(ConfigError, match="unknown device 'cuda:1'"):
        only_first.try_reserve(ResourceEstimate(memory=1, cpus=0.1), "cuda:1")
    cpu_only = ResourceLedger(budget, gpus=[])
    on_cpu = cpu_only.try_reserve(ResourceEstimate(memory=1, gpu_memory=900, cpus=0.1))
    assert on_cpu is not None and on_cpu.device == "cpu"
    assert cpu_only.snapshot()["memory"] == {"reserved": 901, "limit": 10_000}
    with pytest.raises(ConfigError, match="GPUs only"):
        ResourceLedger(budget, gpus=["cpu"])


def test_limits_are_the_smaller_of_budget_and_machine_less_the_margin() -> None:
    machine = Machine(memory=10_000, cpus=3, gpus={"cuda:0": 1000, "cuda:1": 5000})
    book = ResourceLedger(
        ResourceBudget(memory=20_000, device_memory={"cuda:0": 4000, "cuda:1": 2000}),
        machine,
        safety_margin=0.1,
    )
    snapshot = book.snapshot()
    assert snapshot["memory"] == {"reserved": 0, "limit": 9000}
    assert snapshot["cpus"] == {"reserved": 0.0, "limit": 3.0}
    assert snapshot["devices"] == {
        "cuda:0": {"reserved": 0, "limit": 900},
        "cuda:1": {"reserved": 0, "limit": 2000},
    }
    unbudgeted = ResourceLedger(None, machine, safety_margin=0.5).snapshot()
    assert unbudgeted["memory"] == {"reserved": 0, "limit": 5000}
    assert unbudgeted["devices"] == {
        "cuda:0": {"reserved": 0, "limit": 500},
        "cuda:1": {"reserved": 0, "limit": 2500},
    }
    with pytest.raises(ConfigError, match="safety_margin"):
        ResourceLedger(None, machine, safety_margin=1.0)


def test_devices_are_looked_up_only_when_a_request_needs_a_gpu() -> None:
    machine = Machine(memory=10_000, gpus={"cuda:0": 1000})
    book = ResourceLedger(None, machine)
    assert book.try_reserve(ResourceEstimate(memory=10, cpus=0.1)) is not None
    assert machine.device_lookups == 0
    got = book.try_reserve(ResourceEstimate(memory=10, gpu_memory=10, cpus=0.1))
    assert got is not None and got.device == "cuda:0"
    book.try_reserve(ResourceEstimate(memory=10, gpu_memory=10, cpus=0.1))
    assert machine.device_lookups == 1


# --- the scheduler ----------------------------------------------------------------------


def test_scheduler_never_runs_more_than_the_budget_at_once() -> None:
    rng = random.Random(7)
    meter = Meter()
    jobs = [
        Job(
            f"client-{i}",
            ResourceEstimate(rng.randint(500, 1000), cpus=0.1),
            meter=meter,
            dwell=0.005,
        )
        for i in range(20)
    ]
    seen, on_status = statuses()
    report = Scheduler(ledger(memory=2000), max_workers=4, on_status=on_status).run(jobs)
    assert [entry.status for entry in report.entries] == [TaskStatus.FINISHED] * 20
    assert 0 < meter.peak["memory"] <= 2000
    assert seen["client-3"] == [
        TaskStatus.INIT,
        TaskStatus.AVAILABLE,
        TaskStatus.LOADING,
        TaskStatus.WAITING,
        TaskStatus.TRAINING,
        TaskStatus.FINISHED,
    ]


def test_scheduler_keeps_each_gpu_within_its_budget() -> None:
    rng = random.Random(11)
    meter = Meter()
    jobs = [
        Job(
            f"c{i}",
            ResourceEstimate(100, rng.randint(300, 1000), cpus=0.1),
            meter=meter,
            dwell=0.005,
        )
        for i in range(24)
    ]
    report = Scheduler(ledger(memory=100_000, gpus=GPUS), max_workers=6).run(jobs)
    assert {entry.status for entry in report.entries} == {TaskStatus.FINISHED}
    assert {entry.device for entry in report.entries} <= {"cuda:0", "cuda:1"}
    assert meter.peak["cuda:0"] <= 1000
    assert meter.peak["cuda:1"] <= 2000
    assert all(
        job.devices == [entry.device] for job, entry in zip(jobs, report.entries, strict=True)
    )


def test_tasks_that_fit_together_run_together() -> None:
    second_loaded = threading.Event()
    waited: list[bool] = []

    def wait_for_second(job: Job, device: str) -> None:
        waited.append(second_loaded.wait(WAIT))

    first = Job("first", ResourceEstimate(1000, cpus=0.1), during_train=wait_for_second)
    second = Job("second", ResourceEstimate(1000, cpus=0.1))
    second.load_errors = []
    original_load = second.load

    def load_and_signal() -> None:
        original_load()
        second_loaded.set()

    second.load = load_and_signal  # type: ignore[method-assign]
    report = Scheduler(ledger(memory=2000), max_workers=2).run([first, second])
    assert waited == [True]
    assert [entry.status for entry in report.entries] == [TaskStatus.FINISHED] * 2


def test_memory_error_interrupts_and_the_task_reruns_with_a_raised_estimate() -> None:
    job = Job("oom", ResourceEstimate(400, cpus=0.1), train_errors=[MemoryError("no room")])
    job.result = {"loss": 0.25}
    seen, on_status = statuses()
    report = Scheduler(ledger(memory=1000), growth=1.5, on_status=on_status).run([job])
    entry = report.by_name("oom")
    assert seen["oom"] == [
        TaskStatus.INIT,
        TaskStatus.AVAILABLE,
        TaskStatus.LOADING,
        TaskStatus.WAITING,
        TaskStatus.TRAINING,
        TaskStatus.INTERRUPT,
        TaskStatus.AVAILABLE,
        TaskStatus.LOADING,
        TaskStatus.WAITING,
        TaskStatus.TRAINING,
        TaskStatus.FINISHED,
    ]
    assert entry.status is TaskStatus.FINISHED
    assert entry.attempts == 2
    assert entry.result == {"loss": 0.25}
    assert entry.estimate == ResourceEstimate(600, cpus=0.1)
    (interrupt,) = entry.interrupts
    assert (interrupt.attempt, interrupt.stage, interrupt.device) == (1, "train", "cpu")
    assert interrupt.estimate == ResourceEstimate(400, cpus=0.1)
    assert (interrupt.error_type, interrupt.message) == ("MemoryError", "no room")
    assert report.groups()["round-1"].interrupted_and_retried == ("oom",)


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 1 GiB total)"),
        torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    ],
)
def test_a_cuda_out_of_memory_raises_the_gpu_estimate(error: BaseException) -> None:
    job = Job("gpu", ResourceEstimate(100, 400, cpus=0.1), train_errors=[error])
    report = Scheduler(ledger(memory=1000, gpus=GPUS), growth=2).run([job])
    entry = report.by_name("gpu")
    assert entry.status is TaskStatus.FINISHED
    assert [i.estimate for i in entry.interrupts] == [ResourceEstimate(100, 400, cpus=0.1)]
    assert entry.interrupts[0].device == "cuda:1"
    assert entry.interrupts[0].error_type == type(error).__name__
    assert entry.estimate == ResourceEstimate(100, 800, cpus=0.1)  # system memory unchanged


def test_out_of_memory_while_loading_raises_system_memory() -> None:
    job = Job("big-data", ResourceEstimate(100, 400, cpus=0.1), load_errors=[MemoryError()])
    report = Scheduler(ledger(memory=1000, gpus=GPUS), growth=2).run([job])
    entry = report.by_name("big-data")
    assert entry.status is TaskStatus.FINISHED
    assert entry.interrupts[0].stage == "load"
    assert entry.estimate == ResourceEstimate(200, 400, cpus=0.1)


def test_a_task_out_of_memory_on_every_try_fails_after_max_retries() -> None:
    job = Job("hog", ResourceEstimate(100, cpus=0.1), train_errors=[MemoryError("full")] * 10)
    seen, on_status = statuses()
    report = Scheduler(ledger(), max_retries=2, growth=2, on_status=on_status).run([job])
    entry = report.by_name("hog")
    assert entry.status is TaskStatus.EXCEPTION
    assert entry.attempts == 3
    assert [i.estimate.memory for i in entry.interrupts] == [100, 200, 400]
    assert (entry.stage, entry.error_type) == ("train", "MemoryError")
    assert entry.message is not None and "all 3 tries" in entry.message
    assert seen["hog"].count(TaskStatus.INTERRUPT) == 3
    assert seen["hog"][-2:] == [TaskStatus.INTERRUPT, TaskStatus.EXCEPTION]
    assert report.groups()["round-1"].failed == ("hog",)


def test_an_estimate_raised_past_the_budget_fails_at_admission() -> None:
    job = Job("grows", ResourceEstimate(600, cpus=0.1), train_errors=[MemoryError()])
    report = Scheduler(ledger(memory=1000), growth=2).run([job])
    entry = report.by_name("grows")
    assert entry.status is TaskStatus.EXCEPTION
    assert (entry.stage, entry.error_type) == ("admission", "InsufficientResourcesError")
    assert len(entry.interrupts) == 1 and entry.attempts == 1


def test_other_errors_end_in_exception_with_their_stage() -> None:
    jobs = [
        Job("bad-data", load_errors=[ValueError("column 'age' has text")]),
        Job("bad-model", train_errors=[KeyError("weights")]),
        Job("exits", train_errors=[SystemExit(3)]),
        Job("too-big", ResourceEstimate(5000, cpus=0.1)),
        Job("fine", result=3),
    ]
    report = Scheduler(ledger(memory=1000)).run(jobs)
    outcome = {e.name: (e.status, e.stage, e.error_type, e.message) for e in report.entries}
    assert outcome["bad-data"] == (
        TaskStatus.EXCEPTION, "load", "ValueError", "column 'age' has text"
    )  # fmt: skip
    assert outcome["bad-model"] == (TaskStatus.EXCEPTION, "train", "KeyError", "'weights'")
    assert outcome["exits"][:3] == (TaskStatus.EXCEPTION, "train", "SystemExit")
    status, stage, error_type, message = outcome["too-big"]
    assert (status, stage, error_type) == (
        TaskStatus.EXCEPTION,
        "admission",
        "InsufficientResourcesError",
    )
    assert message is not None and "lower the estimate" in message
    assert outcome["fine"][0] is TaskStatus.FINISHED
    assert report.by_name("fine").result == 3
    assert report.by_name("too-big").attempts == 0


def test_admission_is_first_in_first_out_and_a_retry_goes_first() -> None:
    log: list[str] = []
    jobs = [Job(name, log=log) for name in "abcd"]
    jobs[1].train_errors = [MemoryError()]
    Scheduler(ledger(), max_workers=1).run(jobs)
    assert log == ["a", "b", "b", "c", "d"]


def test_stop_from_a_status_callback_exits_the_queue_and_lets_running_tasks_finish() -> None:
    scheduler: Scheduler
    seen, record = statuses()

    def on_status(name: str, status: TaskStatus) -> None:
        record(name, status)
        if name == "t0" and status is TaskStatus.TRAINING:
            scheduler.stop()

    scheduler = Scheduler(ledger(), max_workers=1, on_status=on_status)
    report = scheduler.run([Job(f"t{i}") for i in range(5)])
    assert [entry.status for entry in report.entries] == [TaskStatus.FINISHED] + [
        TaskStatus.EXITED
    ] * 4
    assert seen["t3"] == [TaskStatus.INIT, TaskStatus.AVAILABLE, TaskStatus.EXITED]
    assert report.groups()["round-1"].exited == ("t1", "t2", "t3", "t4")
    assert scheduler.stopped
    assert [e.status for e in scheduler.run([Job("late")]).entries] == [TaskStatus.EXITED]


def test_stop_from_another_thread_ends_a_wait_for_memory() -> None:
    training = threading.Event()
    go_on = threading.Event()

    def hold(job: Job, device: str) -> None:
        training.set()
        assert go_on.wait(WAIT)

    book = ledger(memory=1000)
    scheduler = Scheduler(book, max_workers=2)
    jobs = [Job("holder", ResourceEstimate(800, cpus=0.1), during_train=hold), Job("waiter")]
    jobs[1].estimate = ResourceEstimate(800, cpus=0.1)
    reports: list[SchedulerReport] = []
    runner = threading.Thread(target=lambda: reports.append(scheduler.run(jobs)))
    runner.start()
    assert training.wait(WAIT)
    scheduler.stop()  # "waiter" waits for memory that "holder" keeps until go_on
    assert scheduler.statistics().get("EXITED") == 1
    go_on.set()
    runner.join(WAIT)
    (report,) = reports
    assert [e.status for e in report.entries] == [TaskStatus.FINISHED, TaskStatus.EXITED]
    assert book.snapshot()["reservations"] == 0


def test_an_out_of_memory_after_stop_is_not_retried() -> None:
    scheduler: Scheduler

    def stop_then_fail(job: Job, device: str) -> None:
        scheduler.stop()
        raise MemoryError("late")

    seen, on_status = statuses()
    scheduler = Scheduler(ledger(), on_status=on_status)
    entry = scheduler.run([Job("late", during_train=stop_then_fail)]).entries[0]
    assert entry.status is TaskStatus.EXITED
    assert seen["late"][-2:] == [TaskStatus.INTERRUPT, TaskStatus.EXITED]
    assert len(entry.interrupts) == 1 and entry.attempts == 1


def test_a_failing_status_callback_does_not_stop_the_run(caplog: pytest.LogCaptureFixture) -> None:
    def broken(name: str, status: TaskStatus) -> None:
        raise RuntimeError("callback bug")

    report = Scheduler(ledger(), on_status=broken).run([Job("a"), Job("b")])
    assert [e.status for e in report.entries] == [TaskStatus.FINISHED] * 2
    assert "on_status callback failed" in caplog.text


def test_things_that_are_not_tasks_are_refused_before_anything_runs() -> None:
    log: list[str] = []

    @dataclass
    class NoEstimate:
        name: str = "n"
        group: str = "g"
        estimate: object = "2 GB"

        def load(self) -> None:
            log.append("ran")

        def train(self, device: str) -> object:
            return None

    with pytest.raises(ConfigError, match=r"task #1 \('n'\).*ResourceEstimate.of"):
        Scheduler(ledger()).run([Job("ok", log=log), NoEstimate()])  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="load\\(\\) is missing"):
        Scheduler(ledger()).run([object()])  # type: ignore[list-item]
    assert log == []
    assert isinstance(Job("protocol"), SchedulableTask)


@pytest.mark.parametrize(
    "options",
    [{"max_workers": 0}, {"max_retries": -1}, {"growth": 0.9}, {"growth": math.inf}],
)
def test_scheduler_options_are_checked(options: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Scheduler(ledger(), **options)  # type: ignore[arg-type]


def test_a_scheduler_runs_one_run_at_a_time() -> None:
    inside = threading.Event()
    go_on = threading.Event()

    def block(job: Job, device: str) -> None:
        inside.set()
        assert go_on.wait(WAIT)

    scheduler = Scheduler(ledger())
    runner = threading.Thread(target=lambda: scheduler.run([Job("a", during_train=block)]))
    runner.start()
    assert inside.wait(WAIT)
    with pytest.raises(FedloomError, match="already running"):
        scheduler.run([Job("b")])
    go_on.set()
    runner.join(WAIT)


# --- the report -------------------------------------------------------------------------


def test_report_files_are_one_valid_json_file_per_group(tmp_path: Path) -> None:
    jobs = [
        Job("a", group="round/1", result=np.float64(0.5)),
        Job("b", group="round/1", train_errors=[MemoryError("x")], result=[1, 2]),
        Job("c", group="round/1", load_errors=[ValueError("broken file")]),
        Job("d", group="round 2", result=np.arange(3)),
        Job("e", group="round_1", result="done"),
    ]
    report = Scheduler(ledger(), max_workers=1).run(jobs)
    paths = report.write(tmp_path / "reports")
    assert [p.name for p in paths] == ["round_1.json", "round_2.json", "round_1-2.json"]
    assert sorted(p.name for p in (tmp_path / "reports").iterdir()) == sorted(p.name for p in paths)
    first = json.loads(paths[0].read_text())
    assert first["group"] == "round/1"
    assert first["finished"] == {"count": 2, "tasks": ["a", "b"]}
    assert first["failed"] == {"count": 1, "tasks": ["c"]}
    assert first["interrupted_and_retried"] == {"count": 1, "tasks": ["b"]}
    assert first["exited"] == {"count": 0, "tasks": []}
    entries = {entry["name"]: entry for entry in first["entries"]}
    assert entries["a"]["result"] == 0.5
    assert entries["b"]["interrupts"][0]["estimate"] == {
        "memory": 100,
        "gpu_memory": 0,
        "cpus": 0.1,
    }
    assert entries["b"]["estimate"]["memory"] == 150
    assert (entries["c"]["stage"], entries["c"]["error_type"]) == ("load", "ValueError")
    assert entries["c"]["message"] == "broken file"
    second = json.loads(paths[1].read_text())
    assert second["entries"][0]["result"] == {"type": "ndarray", "repr": "array([0, 1, 2])"}
    report.write(tmp_path / "reports")  # writing again replaces the files in place
    assert len(list((tmp_path / "reports").iterdir())) == 3


def test_summary_text_names_failed_and_retried_tasks() -> None:
    jobs = [
        Job("a", train_errors=[MemoryError()]),
        Job("b", load_errors=[ValueError("no rows")]),
        Job("c", group="eval"),
    ]
    text = Scheduler(ledger(), max_workers=1).run(jobs).summary_text()
    assert text.splitlines() == [
        "round-1: 1 finished, 1 failed, 1 interrupted and retried, 0 exited",
        "  failed: b at load: ValueError: no rows",
        "  retried: a (1 out-of-memory, 2 tries, FINISHED)",
        "eval: 1 finished, 0 failed, 0 interrupted and retried, 0 exited",
    ]
