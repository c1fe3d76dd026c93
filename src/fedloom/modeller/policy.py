"""The modeller's request policy (defined with the task conversation, in
:mod:`fedloom.session.policy`; this path keeps working)."""

from fedloom.session.policy import (
    DEFAULT_REQUEST_TIMEOUT,
    MAX_REQUEST_TIMEOUT,
    OnTimeout,
    RequestPolicy,
)

__all__ = ["DEFAULT_REQUEST_TIMEOUT", "MAX_REQUEST_TIMEOUT", "OnTimeout", "RequestPolicy"]
