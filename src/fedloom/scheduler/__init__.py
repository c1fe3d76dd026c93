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

Statuses. :class:`TaskStatus` names where a task is: INIT (submitted) → AVAILABLE (queued)
→ LOADING / WAITING (resources being reserved) → TRAINING → FINISHED, or EXCEPTION, or
EXITED once stopped.

Re-queue. An out-of-memory error (:func:`is_out_of_memory`: ``MemoryError``,
``torch.cuda.OutOfMemoryError``, an allocator's "out of memory") marks the task INTERRUPT;
the runner raises the estimate of the memory that ran out by ``growth``
(:meth:`ResourceEstimate.raised`) and puts the task back at the front of its queue, up to
``max_retries`` times (:func:`check_retry_rules`); then it ends in EXCEPTION. The
simulation's rounds admit their clients this way (:mod:`fedloom.simulation._round`).
"""

from fedloom.scheduler._ledger import Reservation, ResourceLedger
from fedloom.scheduler._resources import (
    CPU_DEVICE,
    ResourceBudget,
    ResourceEstimate,
    ResourceProbe,
    SystemProbe,
)
from fedloom.scheduler._sizes import format_size, parse_size
from fedloom.scheduler._task import (
    TaskStatus,
    check_retry_rules,
    is_device_out_of_memory,
    is_out_of_memory,
)

__all__ = [
    "CPU_DEVICE",
    "Reservation",
    "ResourceBudget",
    "ResourceEstimate",
    "ResourceLedger",
    "ResourceProbe",
    "SystemProbe",
    "TaskStatus",
    "check_retry_rules",
    "format_size",
    "is_device_out_of_memory",
    "is_out_of_memory",
    "parse_size",
]
