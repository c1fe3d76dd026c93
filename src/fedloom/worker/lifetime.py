"""Processes that must not outlive their parent (task children, a demo's hub and pods)."""

from __future__ import annotations

import contextlib
import sys

PR_SET_PDEATHSIG = 1


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
