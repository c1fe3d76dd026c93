"""The states a scheduled task goes through, and the rules for re-queuing it after an OOM.

How an out-of-memory failure is told apart from any other (:func:`is_out_of_memory`,
:func:`is_device_out_of_memory`) lives in :mod:`fedloom.errors`, so that a pod's task child
classifies its failures the same way; both are re-exported here.
"""

from __future__ import annotations

import math
from enum import StrEnum

from fedloom.errors import ConfigError, is_device_out_of_memory, is_out_of_memory

__all__ = ["TaskStatus", "check_retry_rules", "is_device_out_of_memory", "is_out_of_memory"]


class TaskStatus(StrEnum):
    """Where a scheduled task (a virtual client's round) is in its life.

    INIT (submitted) → AVAILABLE (queued) → LOADING (system memory and CPUs reserved,
    ``load()`` runs) → WAITING (for room on a device) → TRAINING (device memory reserved,
    ``train(device)`` runs) → FINISHED. An out-of-memory error gives INTERRUPT, then
    AVAILABLE again with a raised estimate; other errors give EXCEPTION; a stop turns
    queued tasks into EXITED.
    """

    INIT = "INIT"
    AVAILABLE = "AVAILABLE"
    LOADING = "LOADING"
    WAITING = "WAITING"
    TRAINING = "TRAINING"
    FINISHED = "FINISHED"
    EXITED = "EXITED"
    EXCEPTION = "EXCEPTION"
    INTERRUPT = "INTERRUPT"


def check_retry_rules(max_retries: object, growth: object) -> None:
    """Check the out-of-memory retry rules (how often, and by how much the estimate grows).

    Raises:
        ConfigError: ``max_retries`` is not a whole number ≥ 0, or ``growth`` is not a
            finite factor ≥ 1 (a smaller one would shrink the estimate that ran out).
    """
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
        raise ConfigError(f"max_retries must be a whole number ≥ 0, got {max_retries!r}")
    if (
        isinstance(growth, bool)
        or not isinstance(growth, int | float)
        or not math.isfinite(growth)
        or growth < 1
    ):
        raise ConfigError(f"growth must be a finite factor ≥ 1, got {growth!r}")
