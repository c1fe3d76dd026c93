"""The modeller side: send tasks to pods, collect replies, record experiments."""

from fedloom.modeller._accept import ACCEPT_REQUEST
from fedloom.modeller._cancel import TaskCancellation
from fedloom.modeller._modeller import DEFAULT_ACCEPT_TIMEOUT, Modeller
from fedloom.modeller._result import TaskResult
from fedloom.session import DEFAULT_REQUEST_TIMEOUT, OnTimeout, RequestPolicy

__all__ = [
    "ACCEPT_REQUEST",
    "DEFAULT_ACCEPT_TIMEOUT",
    "DEFAULT_REQUEST_TIMEOUT",
    "Modeller",
    "OnTimeout",
    "RequestPolicy",
    "TaskCancellation",
    "TaskResult",
]
