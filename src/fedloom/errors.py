"""The fedloom errors and their catalogue: every error's code, public text, exit code and
abort reason.

Every failure fedloom raises on purpose is a :class:`FedloomError`. Each subclass names one
kind of failure; callers catch the most specific one they can handle. Import every error
from here (``fedloom.errors``): :data:`__all__` lists them all.

**The catalogue.** Each class in fedloom declares, in its body:

- ``code``: a stable number, unique in the tree (:func:`error_class` finds the class). The
  thousands name the family of failure, not the parent class: 1xxx configuration and
  registries, 2xxx data, 3xxx transport, hub and wire format, 4xxx protocol and task,
  5xxx privacy, access and authentication, 6xxx runtime (simulation, scheduling,
  storage), 9000 the base class. A code is never changed or reused: peers and scripts
  rely on it (``tests/unit/test_error_catalogue.py`` keeps the table).
- ``exit_code``: the :class:`ExitCode` of the ``fedloom`` command this error ends.
- ``abort_reason``: the :class:`AbortReason` a pod sends when this error ends a task.
- ``public_message``: a fixed text naming the failure, with nothing of local state in it.
- ``retryable``: whether trying again can succeed (the hub client reconnects for these).

A class without its own ``code`` (a plugin's subclass) is catalogued as its parent.

**What crosses the network** is :meth:`FedloomError.public_text`, never ``str(error)``:
the ``public=`` text the raiser gave, else the message itself where the class sets
``detail_is_public`` (its messages are made only of fedloom's words and of what the other
party sent or asked for: names in its task, fields of its message), else the class's fixed
``public_message``. A message that may name local paths, data values, row counts, keys or
store contents never sets ``detail_is_public``; a raiser that knows a safe version passes
it as ``public=``.
"""

from __future__ import annotations

from fedloom._error_codes import (
    AbortReason,
    ExitCode,
)
from fedloom._error_reports import (
    ErrorReport,
    PodFailure,
    PodResponseError,
    abort_reason_for,
    exit_code_for,
    is_device_out_of_memory,
    is_out_of_memory,
)
from fedloom._error_tree import (
    ConfigError,
    DataError,
    DatasetNotFoundError,
    DuplicateNameError,
    EmptyDatasetError,
    FedloomError,
    HubUnavailableError,
    InsecureKeyFileError,
    KeyFileError,
    MailboxClosedError,
    MessageTooLargeError,
    MissingColumnError,
    NoNewDataError,
    ReceiveTimeoutError,
    RegistryError,
    ResourceSpecError,
    SchemaMismatchError,
    TooManyFailuresError,
    TransportError,
    UnknownNameError,
    UnknownRecipientError,
    WireError,
)
from fedloom._error_tree_tasks import (
    AccessDeniedError,
    AggregationError,
    AuthenticationError,
    BadSignatureError,
    DecryptionError,
    InsufficientResourcesError,
    LimitsExceededError,
    ModellerTimeoutError,
    NotFoundError,
    PrivacyThresholdError,
    ProtocolError,
    ReplayedMessageError,
    RouteRefusedError,
    SchemaVersionError,
    SimulationError,
    StaleMessageError,
    StoreError,
    TaskAbortedError,
    TaskCancelledError,
    UnknownIdentityError,
    UpdateRejectedError,
    UpdateRejectionReason,
    WorkerFailedError,
    WorkerLostError,
    catalogue,
    error_class,
    error_from_public,
)

__all__ = [
    "AbortReason",
    "AccessDeniedError",
    "AggregationError",
    "AuthenticationError",
    "BadSignatureError",
    "ConfigError",
    "DataError",
    "DatasetNotFoundError",
    "DecryptionError",
    "DuplicateNameError",
    "EmptyDatasetError",
    "ErrorReport",
    "ExitCode",
    "FedloomError",
    "HubUnavailableError",
    "InsecureKeyFileError",
    "InsufficientResourcesError",
    "KeyFileError",
    "LimitsExceededError",
    "MailboxClosedError",
    "MessageTooLargeError",
    "MissingColumnError",
    "ModellerTimeoutError",
    "NoNewDataError",
    "NotFoundError",
    "PodFailure",
    "PodResponseError",
    "PrivacyThresholdError",
    "ProtocolError",
    "ReceiveTimeoutError",
    "RegistryError",
    "ReplayedMessageError",
    "ResourceSpecError",
    "RouteRefusedError",
    "SchemaMismatchError",
    "SchemaVersionError",
    "SimulationError",
    "StaleMessageError",
    "StoreError",
    "TaskAbortedError",
    "TaskCancelledError",
    "TooManyFailuresError",
    "TransportError",
    "UnknownIdentityError",
    "UnknownNameError",
    "UnknownRecipientError",
    "UpdateRejectedError",
    "UpdateRejectionReason",
    "WireError",
    "WorkerFailedError",
    "WorkerLostError",
    "abort_reason_for",
    "catalogue",
    "error_class",
    "error_from_public",
    "exit_code_for",
    "is_device_out_of_memory",
    "is_out_of_memory",
]
