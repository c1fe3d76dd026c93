"""Thread budgets: how many threads one worker process may compute with.

torch, OpenMP, MKL and OpenBLAS each start one thread per core by default. N task
children (or simulation workers) on one machine then run N times as many busy threads as
there are cores, and spin against each other: on 2 cores, 4 pods training a small MLP
took 25-60x longer per round than the same work on one thread each. A worker process gets
a budget instead (a pod's cores shared among its concurrent tasks; a simulation's one
thread per worker) and applies it with :func:`apply_thread_budget` before torch starts
work.
"""

from __future__ import annotations

import logging
import os

from fedloom.errors import ConfigError

logger = logging.getLogger(__name__)

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
"""The environment variables the numeric libraries read for their thread counts."""


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity; all of them if unknown)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def share_of_cores(cores: int, parts: int) -> int:
    """Threads for each of ``parts`` workers sharing ``cores`` (at least one).

    Raises:
        ConfigError: ``cores`` or ``parts`` is not an integer >= 1.
    """
    for name, value in (("cores", cores), ("parts", parts)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
    return max(1, cores // parts)


def check_threads(threads: object, where: str = "threads") -> int:
    """``threads`` if it is an integer >= 1.

    Raises:
        ConfigError: it is not (the message names ``where``).
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"{where} must be an integer >= 1, got {threads!r}")
    return threads


def apply_thread_budget(threads: int) -> None:
    """Let this process compute with at most ``threads`` threads, from now on.

    - The environment variables of :data:`THREAD_VARIABLES`, for libraries loaded later
      and for the processes this one starts;
    - the BLAS and OpenMP libraries already loaded (numpy's OpenBLAS, torch's OpenMP),
      through threadpoolctl;
    - torch's intra-op and inter-op thread pools (torch is imported: every worker that
      trains has it loaded anyway). The inter-op pool can only be sized
      before it first runs work; a process whose pool already ran keeps its size, and
      this is logged, not raised.

    Raises:
        ConfigError: ``threads`` is not an integer >= 1.
    """
    check_threads(threads)
    for variable in THREAD_VARIABLES:
        os.environ[variable] = str(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)  # kept until the process ends
    import torch

    torch.set_num_threads(threads)
    if torch.get_num_interop_threads() != threads:
        try:
            torch.set_num_interop_threads(threads)
        except RuntimeError as exc:  # the pool already ran work in this process
            logger.debug("inter-op threads stay at %d: %s", torch.get_num_interop_threads(), exc)


__all__ = [
    "THREAD_VARIABLES",
    "apply_thread_budget",
    "available_cores",
    "check_threads",
    "share_of_cores",
]
