"""The modeller side: send tasks to pods, collect replies, record experiments."""

from fedloom.modeller.cancel import TaskCancellation
from fedloom.modeller.modeller import (
    ACCEPT_REQUEST,
    DEFAULT_ACCEPT_TIMEOUT,
    Modeller,
    TaskResult,
)
from fedloom.modeller.policy import DEFAULT_REQUEST_TIMEOUT, OnTimeout, RequestPolicy

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
