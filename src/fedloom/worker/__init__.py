"""Worker isolation: each task's worker side runs in a spawned child process.

:class:`WorkerProcess` (the pod's side) spawns :func:`child_main`, brokers the child's
:class:`ProxyMailbox` over a pipe (large frames through memory-mapped files), sets the
start event on the modeller's TASK_START, and watches the child's exit, heartbeat and
memory.
"""

from fedloom.registry import import_plugins
from fedloom.worker.child import ProxyMailbox, child_main
from fedloom.worker.config import IsolationSettings, WorkerConfig
from fedloom.worker.process import WorkerProcess

__all__ = [
    "IsolationSettings",
    "ProxyMailbox",
    "WorkerConfig",
    "WorkerProcess",
    "child_main",
    "import_plugins",
]
