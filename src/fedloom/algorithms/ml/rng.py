"""Seeding torch's global generators from threads without deadlocking.

torch keeps one global CPU generator per process, used by dropout and weight
initialisation. :func:`seeded` seeds it for a block and restores it after, like
:func:`torch.random.fork_rng`, but under one process-wide Python lock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

__all__ = ["seeded"]

_RNG_LOCK = threading.Lock()
"""Serialises reading, seeding and restoring torch's global generators across threads.

torch holds a generator's C++ mutex while it builds the state tensor, and that allocation
can run the garbage collector, whose finalizers may wait on other threads; a second
thread blocking on the same mutex *with the GIL held* then deadlocks every trainer (seen
with two in-process pods training at once). Waiting on this Python lock releases the GIL.
"""


@contextmanager
def seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG for the block (dropout etc.) and restore it afterwards.

    Threads share torch's global generator: concurrent trainers each get their seed at the
    start, but their random draws interleave (see the thread backend's notes).
    """
    cuda = device.type == "cuda"
    with _RNG_LOCK:
        cpu_state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state(device) if cuda else None
        # only the generators in use: torch.manual_seed would also queue lazy seeding of
        # every accelerator backend, formatting a stack trace each time (0.2 ms a call)
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
    try:
        yield
    finally:
        with _RNG_LOCK:
            torch.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state(cuda_state, device)
