"""glibc malloc settings for long-lived processes that train models.

torch takes every activation and gradient from ``malloc``. glibc serves a large request
with a fresh ``mmap`` (above its mmap threshold: 128 KiB, raised on the fly to at most
32 MiB) and unmaps it again on ``free``; freed memory at the top of the heap goes back to
the kernel past the trim threshold. A training step therefore page-faults on each large
tensor it makes, every step: about 20,000 faults per client for the W2 CNN of
docs/benchmarks.md and 16,000 for W3's MLP, none once warm with these settings (W3: 88 ->
42 ms per client). Faults are costly in a virtual machine, and more so when two processes
fault at the same time: on the 2-core development machine two plain torch processes got
0.77-0.89 of twice one process's speed, 0.92-0.99 with the heap kept
(``benchmarks/bare_loop.py --parallel``, with and without these settings).

:func:`keep_freed_memory` makes a process take large blocks from its heap too and keep
what it frees (up to ``trim_threshold``) for the next step. The cost: the process holds
on to its peak heap instead of returning it between steps, which a worker that trains
the same model again and again needs anyway.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

__all__ = ["DEFAULT_TRIM_THRESHOLD", "keep_freed_memory", "user_tuned_malloc"]

DEFAULT_TRIM_THRESHOLD = 1 << 30

_M_TRIM_THRESHOLD = -1  # from glibc's malloc.h
_M_MMAP_MAX = -4
_USER_SETTINGS = (
    "MALLOC_MMAP_MAX_",
    "MALLOC_MMAP_THRESHOLD_",
    "MALLOC_TRIM_THRESHOLD_",
    "MALLOC_TOP_PAD_",
)


def user_tuned_malloc(environ: dict[str, str] | None = None) -> bool:
    """Whether the environment already sets glibc's heap/mmap behaviour (then leave it)."""
    env = os.environ if environ is None else environ
    if any(name in env for name in _USER_SETTINGS):
        return True
    tunables = env.get("GLIBC_TUNABLES", "")
    return any(
        key in tunables
        for key in ("glibc.malloc.mmap", "glibc.malloc.trim", "glibc.malloc.top_pad")
    )


def keep_freed_memory(trim_threshold: int = DEFAULT_TRIM_THRESHOLD) -> bool:
    """Serve large allocations from the heap and keep up to ``trim_threshold`` bytes freed.

    Applies to this process from now on (earlier blocks are unaffected). Does nothing,
    and returns False, off Linux/glibc or when the environment sets malloc's behaviour
    itself (``MALLOC_MMAP_MAX_``, ``MALLOC_TRIM_THRESHOLD_``, ... or ``GLIBC_TUNABLES``):
    the user's choice wins. A request the heap cannot grow for still gets an ``mmap``.

    Raises:
        ValueError: ``trim_threshold`` is not in ``[0, 2**31)`` (glibc takes a C int).
    """
    if not 0 <= trim_threshold < 2**31:
        raise ValueError(f"trim_threshold must be in [0, 2**31), got {trim_threshold}")
    if not sys.platform.startswith("linux") or user_tuned_malloc():
        return False
    mallopt = None
    with contextlib.suppress(OSError, AttributeError):
        mallopt = ctypes.CDLL(None).mallopt
    if mallopt is None:
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # glibc returns 1 on success; other C libraries may have no such knobs (0)
    return bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold)) and bool(mallopt(_M_MMAP_MAX, 0))
