"""The modeller side: send tasks to pods, collect replies, record experiments."""

from fedloom.modeller.modeller import DEFAULT_ACCEPT_TIMEOUT, Modeller, TaskResult

__all__ = ["DEFAULT_ACCEPT_TIMEOUT", "Modeller", "TaskResult"]
