"""A task's outcome as a plain JSON summary, for people and scripts.

The command line renders it (:mod:`fedloom.cli._report`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedloom.errors import ErrorReport
from fedloom.modeller._result import TaskResult

__all__ = ["NO_NEW_DATA", "describe"]

NO_NEW_DATA = "no_new_data"
"""The key of a batched protocol's summary that lists the pods with no new files."""


def describe(result: TaskResult[Any]) -> dict[str, Any]:
    """A JSON-able summary of a task's outcome for people and scripts.

    ``rejected`` and ``aborted`` map each pod to its ``{"reason": CODE, "message": ...}``.
    """
    return {
        "task_id": result.task_id,
        "protocol": result.protocol,
        "accepted": result.accepted,
        "rejected": _reports(result.rejected),
        "aborted": _reports(result.aborted),
        "experiment_id": result.experiment_id,
        "seconds": round(result.seconds, 3),
    }


def _reports(reports: Mapping[str, ErrorReport]) -> dict[str, dict[str, str]]:
    return {
        pod: {"reason": report.reason.value, "message": report.message}
        for pod, report in sorted(reports.items())
    }
