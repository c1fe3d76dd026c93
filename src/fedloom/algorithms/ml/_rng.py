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

__all__ = ["draws_random_numbers", "seeded"]

_RNG_LOCK = threading.RLock()
"""Serialises reading, seeding and restoring torch's global generators across threads.

torch holds a generator's C++ mutex while it builds the state tensor, and that allocation
can run the garbage collector, whose finalizers may wait on other threads; a second
thread blocking on the same mutex *with the GIL held* then deadlocks every trainer (seen
with two in-process pods training at once). Waiting on this Python lock releases the GIL.
"""


@contextmanager
def seeded(seed: int, device: torch.device, *, exclusive: bool = False) -> Iterator[None]:
    """Seed torch's RNG for the block (dropout, initialisation) and restore it afterwards.

    ``exclusive`` holds the lock for the whole block, so no other thread draws from the
    global generator meanwhile: use it for short blocks that must be reproducible while
    other threads run (building a model). Without it only the seeding and the restoring
    are locked: concurrent trainers each start from their seed, but if their models draw
    random numbers (dropout) the draws interleave (see the thread backend's notes).
    """
    if exclusive:
        with _RNG_LOCK, _seeded_unlocked(seed, device):
            yield
        return
    with _RNG_LOCK:
        states = _save(device)
        _seed(seed, device)
    try:
        yield
    finally:
        with _RNG_LOCK:
            _restore(states, device)


@contextmanager
def _seeded_unlocked(seed: int, device: torch.device) -> Iterator[None]:
    states = _save(device)
    _seed(seed, device)
    try:
        yield
    finally:
        _restore(states, device)


def _save(device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _seed(seed: int, device: torch.device) -> None:
    # only the generators in use: torch.manual_seed would also queue lazy seeding of
    # every accelerator backend, formatting a stack trace each time (0.2 ms a call)
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def _restore(states: tuple[torch.Tensor, torch.Tensor | None], device: torch.device) -> None:
    cpu, cuda = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


_RANDOM_LAYERS = (
    torch.nn.modules.dropout._DropoutNd,
    torch.nn.AlphaDropout,
    torch.nn.FeatureAlphaDropout,
    torch.nn.RReLU,
)


def draws_random_numbers(model: torch.nn.Module) -> bool:
    """Whether ``model`` has layers that draw from torch's RNG while training (dropout)."""
    return any(isinstance(module, _RANDOM_LAYERS) for module in model.modules())
