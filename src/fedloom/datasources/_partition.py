"""Seeded splits of one dataset over simulated clients.

Both functions return one sorted ``int64`` index array per client; together the arrays
hold every index exactly once. They draw from ``numpy.random.Generator(PCG64(seed))`` only,
so a seed gives the same split on every machine and for any number of simulation workers.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

from fedloom.errors import ConfigError

DEFAULT_MAX_ATTEMPTS = 100


def _rng(seed: int) -> np.random.Generator:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, not {seed!r}")
    return np.random.Generator(np.random.PCG64(int(seed)))


def _check_count(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return int(value)


def iid_partition(num_samples: int, num_clients: int, *, seed: int) -> list[np.ndarray]:
    """Shuffle ``range(num_samples)`` and deal it out in near-equal parts.

    Client sizes differ by at most one; each array is sorted.

    Raises:
        ConfigError: ``num_clients < 1``, ``num_samples < num_clients`` (a client would be
            empty), or a negative/non-integer seed.
    """
    clients = _check_count("num_clients", num_clients, 1)
    samples = _check_count("num_samples", num_samples, 0)
    if clients > samples:
        raise ConfigError(
            f"cannot give {clients} clients at least one sample each from {samples} samples"
        )
    order = _rng(seed).permutation(samples)
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, clients)]


def dirichlet_partition(
    labels: np.ndarray,
    num_clients: int,
    *,
    alpha: float,
    seed: int,
    min_samples_per_client: int = 1,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> list[np.ndarray]:
    """A label-skewed (non-IID) split: each class is shared out by a Dirichlet(alpha) draw.

    For every class, the indices of that class are shuffled and cut into ``num_clients``
    parts with proportions drawn from ``Dirichlet([alpha] * num_clients)`` (Hsu et al.,
    2019). Small ``alpha`` gives each client few classes; large ``alpha`` tends to IID.
    The whole draw is repeated (from the same generator, so still deterministic) until
    every client holds at least ``min_samples_per_client`` indices.

    Raises:
        ConfigError: ``labels`` is not 1-D; ``num_clients < 1`` or more clients than can
            each get ``min_samples_per_client`` samples; ``alpha`` not a finite number
            > 0; ``max_attempts < 1``; a bad seed; or no draw met the minimum within
            ``max_attempts`` (raise ``alpha`` or lower the minimum).
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ConfigError(f"labels must be 1-D, got shape {labels.shape}")
    clients = _check_count("num_clients", num_clients, 1)
    minimum = _check_count("min_samples_per_client", min_samples_per_client, 0)
    attempts = _check_count("max_attempts", max_attempts, 1)
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not math.isfinite(alpha):
        raise ConfigError(f"alpha must be a finite number > 0, not {alpha!r}")
    if alpha <= 0:
        raise ConfigError(f"alpha must be > 0, not {alpha!r}")
    if clients > len(labels) or clients * minimum > len(labels):
        raise ConfigError(
            f"cannot give {clients} clients at least {max(minimum, 1)} sample(s) each from "
            f"{len(labels)} samples"
        )
    rng = _rng(seed)
    _, codes = np.unique(labels, return_inverse=True)
    by_class = [np.flatnonzero(codes == k) for k in range(int(codes.max(initial=-1)) + 1)]
    concentration = np.full(clients, float(alpha))
    for _ in range(attempts):
        parts: list[list[np.ndarray]] = [[] for _ in range(clients)]
        for members in by_class:
            shuffled = rng.permutation(members)
            shares = rng.dirichlet(concentration)
            cuts = (np.cumsum(shares) * len(shuffled)).astype(np.int64)[:-1]
            for client, piece in enumerate(np.split(shuffled, cuts)):
                parts[client].append(piece)
        result = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
        if min(len(r) for r in result) >= minimum:
            return result
    raise ConfigError(
        f"no Dirichlet(alpha={alpha}) split in {attempts} attempts gave every one of "
        f"{clients} clients at least {minimum} samples; raise alpha, lower "
        "min_samples_per_client, or use fewer clients"
    )
