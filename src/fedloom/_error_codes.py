"""The numbered registries behind :mod:`fedloom.errors`: abort reasons and exit codes.

Each entry has a help text for people. Import them from :mod:`fedloom.errors`.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class AbortReason(StrEnum):
    """Closed set of reasons carried by JOB_REJECT and TASK_ABORT."""

    NO_ACCESS = "NO_ACCESS"
    UNAUTHORISED = "UNAUTHORISED"
    NO_DATA = "NO_DATA"
    INCOMPATIBLE_DATASOURCE = "INCOMPATIBLE_DATASOURCE"
    INVALID_TASK = "INVALID_TASK"
    PRIVACY_THRESHOLD = "PRIVACY_THRESHOLD"
    WORKER_ERROR = "WORKER_ERROR"
    WORKER_UNRESPONSIVE = "WORKER_UNRESPONSIVE"
    WORKER_CRASHED = "WORKER_CRASHED"
    WORKER_OUT_OF_MEMORY = "WORKER_OUT_OF_MEMORY"
    NO_NEW_DATA = "NO_NEW_DATA"
    LIMITS_EXCEEDED = "LIMITS_EXCEEDED"
    MODELLER_TIMEOUT = "MODELLER_TIMEOUT"
    CANCELLED_BY_MODELLER = "CANCELLED_BY_MODELLER"
    UPDATE_REJECTED = "UPDATE_REJECTED"

    @property
    def help_text(self) -> str:
        """What the reason means, for people."""
        return _ABORT_HELP[self]


_ABORT_HELP: dict[AbortReason, str] = {
    AbortReason.NO_ACCESS: "The pod does not accept this protocol, algorithm or modeller.",
    AbortReason.UNAUTHORISED: "The request was not signed by an identity the pod trusts.",
    AbortReason.NO_DATA: "The pod has no dataset under the requested name, or it is empty.",
    AbortReason.INCOMPATIBLE_DATASOURCE: "The dataset does not fit the task (columns, schema).",
    AbortReason.INVALID_TASK: "The task definition could not be rebuilt or failed validation.",
    AbortReason.PRIVACY_THRESHOLD: "Too few rows to release the result under the pod's policy.",
    AbortReason.WORKER_ERROR: "The task raised an error while running on the pod.",
    AbortReason.WORKER_UNRESPONSIVE: "The pod's worker stopped answering.",
    AbortReason.WORKER_CRASHED: "The pod's worker process died (exit code or signal).",
    AbortReason.WORKER_OUT_OF_MEMORY: (
        "The task ran out of memory (system or GPU), or used more than the pod allows."
    ),
    AbortReason.NO_NEW_DATA: "There is no data the task has not already processed.",
    AbortReason.LIMITS_EXCEEDED: "The model used up the pod's usage limit.",
    AbortReason.MODELLER_TIMEOUT: "The modeller did not answer in time.",
    AbortReason.CANCELLED_BY_MODELLER: "The modeller cancelled the task.",
    AbortReason.UPDATE_REJECTED: "The update was left out of the aggregate (NaN/Inf, shape).",
}


class ExitCode(IntEnum):
    """Process exit codes of the ``fedloom`` command line (stable: scripts test them)."""

    SUCCESS = 0
    ERROR = 1
    USAGE = 2
    CONFIG = 3
    DATA = 4
    TASK_FAILED = 5
    TRANSPORT = 6
    DENIED = 7
    INTERRUPTED = 130

    @property
    def help_text(self) -> str:
        """What the exit code means and what to do, for people."""
        return _EXIT_HELP[self]


_EXIT_HELP: dict[ExitCode, str] = {
    ExitCode.SUCCESS: "Finished normally.",
    ExitCode.ERROR: "An unexpected error; the message says what happened.",
    ExitCode.USAGE: "The command line was not understood.",
    ExitCode.CONFIG: "A configuration value was wrong; fix it and run again.",
    ExitCode.DATA: "A dataset was missing, empty or did not fit the task.",
    ExitCode.TASK_FAILED: "The federated task was rejected or aborted by the pods.",
    ExitCode.TRANSPORT: (
        "The hub could not be reached or a message was not delivered; running again may work."
    ),
    ExitCode.DENIED: (
        "The hub or a pod refused this identity, or data failed authentication: check the "
        "keys, the hub's registrations and the pods' policies."
    ),
    ExitCode.INTERRUPTED: "Stopped by the user (SIGINT).",
}
