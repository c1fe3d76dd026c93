"""Worker isolation: each task's worker side runs in a spawned child process.

:class:`WorkerProcess` (the pod's side) spawns :func:`child_main`, brokers the child's
:class:`ProxyMailbox` over a pipe (large frames through memory-mapped files), sets the
start event on the modeller's TASK_START, and watches the child's exit, heartbeat and
memory.

The names are loaded on first use: the child's module imports torch, and commands that
only need :mod:`fedloom.worker._lifetime` (every ``fedloom`` command does) must not pay
for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedloom._registry import import_plugins
    from fedloom.worker._child import ProxyMailbox, child_main
    from fedloom.worker._config import IsolationSettings, WorkerConfig
    from fedloom.worker._process import WorkerProcess

__all__ = [
    "IsolationSettings",
    "ProxyMailbox",
    "WorkerConfig",
    "WorkerProcess",
    "child_main",
    "import_plugins",
]

_HOMES = {
    "IsolationSettings": "fedloom.worker._config",
    "ProxyMailbox": "fedloom.worker._child",
    "WorkerConfig": "fedloom.worker._config",
    "WorkerProcess": "fedloom.worker._process",
    "child_main": "fedloom.worker._child",
    "import_plugins": "fedloom._registry",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
