"""What a failing pod reports, as the modeller reads it.

The error report a TASK_ABORT or JOB_REJECT carries, and the one-line text a pod gets in
``PodResponseError``.
"""

from __future__ import annotations

from fedloom.errors import (
    AbortReason,
    ErrorReport,
    PodFailure,
    ProtocolError,
)
from fedloom.wire import Message


def report_of(message: Message) -> ErrorReport:
    """The error report carried by a TASK_ABORT or JOB_REJECT (malformed → WORKER_ERROR)."""
    try:
        return ErrorReport.from_body(message.body)
    except ProtocolError as exc:
        return ErrorReport(AbortReason.WORKER_ERROR, str(exc), "ProtocolError", "")


def failure_text(report: ErrorReport) -> str:
    """``"REASON: message"`` (or the bare reason) for a pod in ``PodResponseError``."""
    return PodFailure.from_report(report).text
