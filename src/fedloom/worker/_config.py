"""What a pod hands to a task's child process, and how it watches it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedloom._hooks import DEFAULT_WORKER_HOOKS
from fedloom.datasources import Datasource
from fedloom.errors import ConfigError
from fedloom.worker._threads import available_cores, check_threads, share_of_cores

DEFAULT_HEARTBEAT_INTERVAL = 5.0
DEFAULT_HEARTBEAT_PATIENCE = 2
DEFAULT_STOP_GRACE = 5.0


@dataclass(frozen=True)
class WorkerConfig:
    """Everything a spawned child needs to rebuild a task's worker side.

    Picklable by construction: names and JSON-able specs, plus the pod's datasource object
    (its description, e.g. a file path or arrays; the child loads the data itself).
    Nothing here comes from pickle on a network path: the protocol spec is the JSON the
    modeller sent, rebuilt in the child from registered names only.
    """

    task_id: str
    pod: str
    modeller: str
    protocol: Mapping[str, Any]
    datasource: Datasource
    min_rows: int
    hooks: tuple[str, ...] = DEFAULT_WORKER_HOOKS
    plugins: tuple[str, ...] = ()
    """Modules the pod's admin approved; the child imports them to register their names."""
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    outputs: Path | None = None
    """The pod's folder for task outputs."""
    handles_start: bool = False
    """The protocol runs the start handshake itself (its TASK_START is forwarded)."""
    # flags of the batched execution (issue 5); carried so the child can rebuild them
    batched: bool = False
    test_run: bool = False
    run_on_new_data_only: bool = False
    force_rerun_failed_files: bool = False
    extras: Mapping[str, Any] = field(default_factory=dict)
    threads: int | None = None
    """The child's thread budget (torch, OpenMP, BLAS); None leaves the libraries' defaults."""


@dataclass(frozen=True)
class IsolationSettings:
    """How a pod supervises its task children.

    ``heartbeat_interval * heartbeat_patience`` seconds without a heartbeat from the
    child's event loop means the child hangs; ``memory_limit_bytes`` (``None``: no cap) is
    the most resident memory a child may use before it is stopped.

    Each child computes with ``threads`` threads; by default the pod's ``cores`` (default:
    every core this machine lets the pod use) shared among the tasks it runs at once
    (:meth:`thread_budget`), so that concurrent children do not starve each other.

    Raises:
        ConfigError: a setting is of the wrong type or out of range.
    """

    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    heartbeat_patience: int = DEFAULT_HEARTBEAT_PATIENCE
    memory_limit_bytes: int | None = None
    stop_grace: float = DEFAULT_STOP_GRACE
    threads: int | None = None
    cores: int | None = None

    def __post_init__(self) -> None:
        if not (math.isfinite(self.heartbeat_interval) and self.heartbeat_interval > 0):
            raise ConfigError(
                f"heartbeat_interval must be a number of seconds > 0, "
                f"got {self.heartbeat_interval!r}"
            )
        patience = self.heartbeat_patience
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ConfigError(f"heartbeat_patience must be an integer >= 1, got {patience!r}")
        limit = self.memory_limit_bytes
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1 << 20
        ):
            raise ConfigError(f"memory_limit_bytes must be None or >= 1 MiB, got {limit!r}")
        if not (math.isfinite(self.stop_grace) and self.stop_grace >= 0):
            raise ConfigError(f"stop_grace must be >= 0 seconds, got {self.stop_grace!r}")
        for name in ("threads", "cores"):
            if getattr(self, name) is not None:
                check_threads(getattr(self, name), name)

    def thread_budget(self, max_concurrent_tasks: int) -> int:
        """Threads for each task child of a pod that runs ``max_concurrent_tasks`` at once.

        Raises:
            ConfigError: ``max_concurrent_tasks`` is not an integer >= 1.
        """
        if self.threads is not None:
            return self.threads
        return share_of_cores(self.cores or available_cores(), max_concurrent_tasks)

    @property
    def hang_seconds(self) -> float:
        """Seconds without a heartbeat after which the child counts as hung."""
        return self.heartbeat_interval * self.heartbeat_patience
