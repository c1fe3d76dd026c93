"""The modeller side: send tasks to pods, collect replies, record experiments."""

from fedloom.modeller.accept import ACCEPT_REQUEST
from fedloom.modeller.cancel import TaskCancellation
from fedloom.modeller.modeller import DEFAULT_ACCEPT_TIMEOUT, Modeller
from fedloom.modeller.policy import DEFAULT_REQUEST_TIMEOUT, OnTimeout, RequestPolicy
from fedloom.modeller.result import TaskResult

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
