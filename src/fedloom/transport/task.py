"""The two task-scoped mailboxes protocols are written against.

:class:`ModellerMailbox` talks to the pods of one task (send, broadcast, gather with a
time-out, collect under the task's request policy, stream); :class:`WorkerMailbox` is the
pod-side end of the same task. Neither knows which transport carries it: both sit on a
:class:`TaskRouter` over any ``Mailbox``.

This is the import path of the task conversation; the pieces live in its siblings:
:mod:`~fedloom.transport.task_gather` (send, gather, stream, drop),
:mod:`~fedloom.transport.task_modeller` (requests under the request policy),
:mod:`~fedloom.transport.task_worker` (the pod's end) and
:mod:`~fedloom.transport.task_reports` (what a failing pod reports).
"""

from fedloom.transport.task_gather import STATUS_TYPES, Gathered, ProgressCallback
from fedloom.transport.task_modeller import ModellerMailbox
from fedloom.transport.task_reports import failure_text, report_of
from fedloom.transport.task_worker import WorkerMailbox

__all__ = [
    "STATUS_TYPES",
    "Gathered",
    "ModellerMailbox",
    "ProgressCallback",
    "WorkerMailbox",
    "failure_text",
    "report_of",
]
