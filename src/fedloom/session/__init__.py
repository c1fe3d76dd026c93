"""The task conversation: the two ends of one task over any mailbox, and the request policy.

:class:`ModellerMailbox` is the modeller's end (send, broadcast, gather under a
time-out, collect under the task's :class:`RequestPolicy`, stream); :class:`WorkerMailbox`
is the pod's end. Neither knows which transport carries it: both sit on a
:class:`~fedloom.transport.TaskRouter` over any :class:`~fedloom.transport.Mailbox`.
Protocols are written against these two classes only.
"""

from fedloom.session._gather import STATUS_TYPES, Gathered, ProgressCallback
from fedloom.session._modeller_end import ModellerMailbox
from fedloom.session._policy import (
    DEFAULT_REQUEST_TIMEOUT,
    MAX_REQUEST_TIMEOUT,
    OnTimeout,
    RequestPolicy,
)
from fedloom.session._reports import failure_text, report_of
from fedloom.session._worker_end import WorkerMailbox

__all__ = [
    "DEFAULT_REQUEST_TIMEOUT",
    "MAX_REQUEST_TIMEOUT",
    "STATUS_TYPES",
    "Gathered",
    "ModellerMailbox",
    "OnTimeout",
    "ProgressCallback",
    "RequestPolicy",
    "WorkerMailbox",
    "failure_text",
    "report_of",
]
