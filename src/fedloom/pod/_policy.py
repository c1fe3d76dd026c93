"""What a pod accepts, and how many tasks it runs at once.

:class:`PodPolicy` and its defaults, and the checks a JOB_REQUEST passes before the pod
accepts it (modeller, algorithms, protocol, dataset).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from fedloom.datasources import Datasource
from fedloom.errors import AccessDeniedError, ConfigError, DatasetNotFoundError
from fedloom.protocols import DEFAULT_MIN_ROWS, TaskProtocol, load_protocol
from fedloom.wire import Message

DEFAULT_START_TIMEOUT = 300.0
"""Seconds an accepted task waits for the modeller's TASK_START before giving up."""

DEFAULT_MODELLER_TIMEOUT = 300.0
"""Seconds an accepted task may go without any message from its modeller (the modeller
sends HEARTBEAT while a task runs) before the pod ends it with MODELLER_TIMEOUT."""

DEFAULT_MAX_CONCURRENT_TASKS = 4
"""Tasks a pod runs at once; more are accepted and wait in arrival order."""


@dataclass(frozen=True)
class PodPolicy:
    """What a pod accepts, and how many tasks it runs at once.

    ``None`` means "any" for the allow-lists.

    Raises:
        ConfigError: ``min_rows`` or ``max_concurrent_tasks`` is not an integer >= 1, or
            ``start_timeout`` or ``modeller_timeout`` is not > 0.
    """

    allowed_protocols: frozenset[str] | None = None
    allowed_modellers: frozenset[str] | None = None
    allowed_algorithms: frozenset[str] | None = None
    """Registered model and algorithm names a task may run here (see TaskProtocol.algorithms)."""
    min_rows: int = DEFAULT_MIN_ROWS
    start_timeout: float = DEFAULT_START_TIMEOUT
    modeller_timeout: float = DEFAULT_MODELLER_TIMEOUT
    """A task whose modeller sends nothing (not even HEARTBEAT) for this long is ended:
    a modeller that died must not hold the pod's task slots for ever."""
    max_concurrent_tasks: int = DEFAULT_MAX_CONCURRENT_TASKS
    usage_limits: Mapping[str, int] = field(default_factory=dict)
    """Most predictions each model (by registered name) may make on this pod, ever."""
    approved_models: frozenset[str] | None = None
    """SHA-256 hashes of model files tasks may run; None: any weights a modeller sends."""

    def __post_init__(self) -> None:
        if (
            isinstance(self.min_rows, bool)
            or not isinstance(self.min_rows, int)
            or self.min_rows < 1
        ):
            raise ConfigError(f"PodPolicy.min_rows must be an integer >= 1, got {self.min_rows!r}")
        for name in ("start_timeout", "modeller_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"PodPolicy.{name} must be a number of seconds > 0")
        if (
            isinstance(self.max_concurrent_tasks, bool)
            or not isinstance(self.max_concurrent_tasks, int)
            or self.max_concurrent_tasks < 1
        ):
            raise ConfigError(
                "PodPolicy.max_concurrent_tasks must be an integer >= 1, "
                f"got {self.max_concurrent_tasks!r}"
            )


@dataclass(frozen=True)
class _Accepted:
    protocol: TaskProtocol[Any]
    datasource: Datasource


def _decide(
    policy: PodPolicy,
    pod: str,
    datasets: Mapping[str, Datasource],
    tasks: Collection[str],
    message: Message,
) -> _Accepted:
    """What pod ``pod`` runs for JOB_REQUEST ``message`` under ``policy``.

    Raises:
        AccessDeniedError: the policy does not allow the modeller, an algorithm or the protocol.
        ConfigError: the request is malformed, or its task is already running (in ``tasks``).
        DatasetNotFoundError: the pod has no dataset of the requested name.
        UnknownNameError: the requested protocol is not registered here.
    """
    if policy.allowed_modellers is not None and message.sender not in policy.allowed_modellers:
        raise AccessDeniedError(f"modeller {message.sender!r} is not allowed on this pod")
    body = message.body
    if not isinstance(body, dict) or not isinstance(body.get("dataset"), str):
        raise ConfigError('a JOB_REQUEST body must be {"task": {...}, "dataset": "<name>"}')
    protocol = load_protocol(body.get("task"))
    refused = sorted(protocol.algorithms() - (policy.allowed_algorithms or frozenset()))
    if policy.allowed_algorithms is not None and refused:
        raise AccessDeniedError(f"algorithms {refused} are not allowed on this pod")
    if policy.allowed_protocols is not None and protocol.name not in policy.allowed_protocols:
        raise AccessDeniedError(f"protocol {protocol.name!r} is not allowed on this pod")
    datasource = datasets.get(body["dataset"])
    if datasource is None:
        # names only: the one the modeller asked for and those the pod offers
        missing = (
            f"pod {pod!r} has no dataset {body['dataset']!r}; it has: {sorted(datasets) or 'none'}"
        )
        raise DatasetNotFoundError(missing, public=missing)
    if message.task_id in tasks:
        raise ConfigError(f"task {message.task_id!r} is already running on this pod")
    return _Accepted(protocol, datasource)
