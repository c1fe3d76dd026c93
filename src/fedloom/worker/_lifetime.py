"""Processes that must not outlive their parent (task children, a demo's hub and pods)."""

from __future__ import annotations

import contextlib
import os
import sys

PR_SET_PDEATHSIG = 1
PARENT_PID_ENV = "FEDLOOM_PARENT_PID"
"""Set by a launcher (LocalCluster) for a ``fedloom`` process that must end with it."""


def die_with_parent(signum: int) -> None:
    """Ask Linux to send ``signum`` to this process when its parent dies.

    For a child whose parent may be killed with SIGKILL (and so cannot stop it); a no-op
    where the call does not exist.
    """
    if sys.platform != "linux":
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signum)


def follow_launcher(signum: int) -> None:
    """In a ``fedloom`` process started with :data:`PARENT_PID_ENV`: end with the launcher.

    Raises:
        SystemExit: the launcher is already gone (it died before this process got here).
    """
    expected = os.environ.get(PARENT_PID_ENV)
    if not expected:
        return
    die_with_parent(signum)
    if expected.isdigit() and os.getppid() != int(expected):
        raise SystemExit(0)
