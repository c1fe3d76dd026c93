"""Request policies: how long the modeller waits for pods, and what it does when they fail.

A task is a series of *requests*: the accept phase (JOB_REQUEST → JOB_ACCEPT/JOB_REJECT),
then every step in which the protocol waits for one reply from each pod (a FedAvg round's
updates, an analytics step's results, ...). One :class:`RequestPolicy` governs them all;
:meth:`fedloom.transport.ModellerMailbox.collect` applies it. This is its one definition:
the modeller re-exports it (``fedloom.RequestPolicy``), the task conversation reads it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

from fedloom.errors import ConfigError

DEFAULT_REQUEST_TIMEOUT = 30.0
"""Seconds a request waits for the pods' replies unless a policy says otherwise."""

MAX_REQUEST_TIMEOUT = 7 * 24 * 3600.0
"""The longest finite time-out a policy accepts (a week); use ``None`` to wait forever."""


class OnTimeout(StrEnum):
    """What a request does with pods that have not answered when its time-out ends."""

    DISCARD = "discard"
    """Leave the late pods out of the rest of the task (they get TASK_ABORT) and go on."""
    STOP = "stop"
    """Stop the task with :class:`~fedloom.errors.PodResponseError` naming the late pods."""


@dataclass(frozen=True)
class RequestPolicy:
    """How every request of a task is gathered and judged.

    Attributes:
        timeout: seconds each request waits for the pods' replies (``None``: forever).
            A protocol's own time-out (e.g. ``FedAvg.round_timeout``), when set, wins for
            that protocol's requests.
        on_timeout: ``"discard"`` drops pods that answer late and goes on; ``"stop"``
            stops the task naming them.
        stop_on_error: the first pod that rejects the task or aborts stops it at once,
            without waiting for the others.
        require_all: every pod must accept the task and answer every request; otherwise
            the task stops naming the pods that rejected, aborted or did not answer.
        min_replies: the fewest usable replies any request may get (accepts, for the
            accept phase) before the task stops.

    A policy that stops the task raises :class:`~fedloom.errors.PodResponseError` whose
    ``failed_pods`` maps each failing pod to why.

    Raises (at construction):
        ConfigError: a time-out that is not a finite number of seconds > 0 (or ``None``),
            an unknown ``on_timeout``, a flag that is not a bool, ``min_replies`` < 1.
    """

    timeout: float | None = DEFAULT_REQUEST_TIMEOUT
    on_timeout: OnTimeout = OnTimeout.DISCARD
    stop_on_error: bool = False
    require_all: bool = False
    min_replies: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "timeout", _timeout(self.timeout))
        object.__setattr__(self, "on_timeout", _on_timeout(self.on_timeout))
        for name in ("stop_on_error", "require_all"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError(f"RequestPolicy.{name} must be true or false, got {value!r}")
        count = self.min_replies
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"RequestPolicy.min_replies must be an integer >= 1, got {count!r}")

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> RequestPolicy:
        """Build a policy from a map such as a TASK.toml ``[policy]`` table.

        Missing keys keep their defaults (TOML has no null: a policy that waits forever
        is only possible from Python or JSON, with ``timeout = None``).

        Raises:
            ConfigError: ``data`` is not a map, has unknown keys, or a bad value.
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a request policy must be a map, got {type(data).__name__}")
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(str(key) for key in data if key not in allowed)
        if unknown:
            raise ConfigError(f"unknown request policy key(s) {unknown}; allowed: {allowed}")
        kwargs: dict[str, Any] = dict(data)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, object]:
        """The JSON-able map that :meth:`from_dict` turns back into this policy."""
        return {
            "timeout": self.timeout,
            "on_timeout": self.on_timeout.value,
            "stop_on_error": self.stop_on_error,
            "require_all": self.require_all,
            "min_replies": self.min_replies,
        }


def _timeout(value: object) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 < value <= MAX_REQUEST_TIMEOUT
    ):
        raise ConfigError(
            f"RequestPolicy.timeout must be a number of seconds in (0, {MAX_REQUEST_TIMEOUT:g}]"
            f" or None to wait forever, got {value!r}"
        )
    return float(value)


def _on_timeout(value: object) -> OnTimeout:
    if isinstance(value, str):  # an OnTimeout is a str too
        with contextlib.suppress(ValueError):
            return OnTimeout(value)
    choices = ", ".join(repr(choice.value) for choice in OnTimeout)
    raise ConfigError(f"RequestPolicy.on_timeout must be one of {choices}, got {value!r}")
