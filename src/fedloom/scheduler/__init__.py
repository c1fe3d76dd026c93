"""Resource-aware scheduling: admit tasks while memory, CPUs and GPU memory allow.

A task (a virtual client's round, or any object with ``name``, ``group``, ``estimate``,
``load()`` and ``train(device)``) declares a :class:`ResourceEstimate` of system memory,
GPU memory and CPUs, written as numbers of bytes or as text (``"456 MB"``, ``"2GiB"``, read
by :func:`parse_size`).

Admission. A :class:`ResourceLedger` keeps limits: the smaller of the user's
:class:`ResourceBudget` and what the machine has (less a safety margin), read through a
:class:`ResourceProbe`. It admits a reservation only while the sum of live reservations
stays within every limit, and raises :class:`~fedloom.errors.InsufficientResourcesError`
for an estimate that could never fit. On the ``"cpu"`` device GPU memory is charged to
system memory.

Statuses. The :class:`Scheduler` moves each task through INIT (submitted) → AVAILABLE
(queued, FIFO) → LOADING (system memory and CPUs reserved, ``load()``) → WAITING (for GPU
memory on the device with the most room) → TRAINING (``train(device)``) → FINISHED,
releasing its reservations at the end. Any other error ends in EXCEPTION, recorded with
its stage (``admission``, ``load``, ``train``); :meth:`Scheduler.stop` turns queued tasks
into EXITED and lets running ones finish.

Re-queue. An out-of-memory error (:func:`is_out_of_memory`: ``MemoryError``,
``torch.cuda.OutOfMemoryError``, an allocator's "out of memory") marks the task INTERRUPT,
raises the estimate of the memory that ran out by ``growth`` and puts the task back at the
front of the queue, up to ``max_retries`` times; then it ends in EXCEPTION.

The :class:`SchedulerReport` lists every task's outcome and writes one JSON file per group.
"""

from fedloom.scheduler.ledger import Reservation, ResourceLedger
from fedloom.scheduler.report import GroupSummary, Interrupt, SchedulerReport, TaskEntry
from fedloom.scheduler.resources import (
    CPU_DEVICE,
    ResourceBudget,
    ResourceEstimate,
    ResourceProbe,
    SystemProbe,
)
from fedloom.scheduler.scheduler import Scheduler
from fedloom.scheduler.sizes import format_size, parse_size
from fedloom.scheduler.task import (
    SchedulableTask,
    TaskStatus,
    is_device_out_of_memory,
    is_out_of_memory,
)

__all__ = [
    "CPU_DEVICE",
    "GroupSummary",
    "Interrupt",
    "Reservation",
    "ResourceBudget",
    "ResourceEstimate",
    "ResourceLedger",
    "ResourceProbe",
    "SchedulableTask",
    "Scheduler",
    "SchedulerReport",
    "SystemProbe",
    "TaskEntry",
    "TaskStatus",
    "format_size",
    "is_device_out_of_memory",
    "is_out_of_memory",
    "parse_size",
]
