"""The error tree behind :mod:`fedloom.errors` (which documents the catalogue's rules):
every class with its code, exit code, abort reason and public text. Import the errors from
:mod:`fedloom.errors`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar

from fedloom._error_codes import AbortReason, ExitCode

_BY_CODE: dict[int, type[FedloomError]] = {}


class FedloomError(Exception):
    """Base class of every error fedloom raises on purpose.

    ``public``: the text that may cross the network instead of the message (see the module
    docstring); keyword-only, so every subclass keeps its own positional arguments.
    """

    code: ClassVar[int] = 9000
    exit_code: ClassVar[ExitCode] = ExitCode.ERROR
    abort_reason: ClassVar[AbortReason] = AbortReason.WORKER_ERROR
    public_message: ClassVar[str] = "fedloom could not complete the request"
    detail_is_public: ClassVar[bool] = False
    retryable: ClassVar[bool] = False

    def __init__(self, *args: object, public: str | None = None) -> None:
        super().__init__(*args)
        self.public = public

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "code" not in cls.__dict__:
            return
        taken = _BY_CODE.get(cls.code)
        if taken is not None:
            raise TypeError(f"error code {cls.code} is taken by {taken.__qualname__}")
        _BY_CODE[cls.code] = cls

    def public_text(self) -> str:
        """The text that may be shown to a remote party (the module docstring says which)."""
        if self.public is not None:
            return self.public
        if self.detail_is_public:
            return str(self) or self.public_message
        return self.public_message


_BY_CODE[FedloomError.code] = FedloomError


# --- configuration and registries (1xxx) -------------------------------------------------


class ConfigError(FedloomError, ValueError):
    """A configuration value is missing, of the wrong type, or out of range."""

    code = 1000
    exit_code = ExitCode.CONFIG
    abort_reason = AbortReason.INVALID_TASK
    public_message = "a configuration value is wrong"
    detail_is_public = True


class ResourceSpecError(ConfigError):
    """A resource estimate could not be read (for example ``"12 parsecs"`` as a size)."""

    code = 1001


class KeyFileError(ConfigError):
    """A key or certificate file is missing, unreadable or malformed."""

    code = 1010
    public_message = "a key or certificate file could not be used"
    detail_is_public = False  # names local paths


class InsecureKeyFileError(KeyFileError):
    """A private key file is readable by others than its owner (chmod 600 it)."""

    code = 1011
    public_message = "a private key file is readable by others than its owner"


class RegistryError(FedloomError):
    """A name could not be resolved in a closed registry."""

    code = 1100
    exit_code = ExitCode.CONFIG
    abort_reason = AbortReason.INVALID_TASK
    public_message = "a name is not registered"
    detail_is_public = True


class UnknownNameError(RegistryError, KeyError):
    """The name is not registered (and nothing was imported to look for it)."""

    code = 1101

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(RegistryError):
    """A second registration under a name that is already taken."""

    code = 1102
    public_message = "a name is registered twice"


# --- data (2xxx) -------------------------------------------------------------------------


class DataError(FedloomError):
    """A dataset could not be used."""

    code = 2000
    exit_code = ExitCode.DATA
    public_message = "the pod's dataset could not be used"


class DatasetNotFoundError(DataError, LookupError):
    """A dataset name or file that does not exist (its message may name a path: raisers
    give a ``public=`` text)."""

    code = 2001
    abort_reason = AbortReason.NO_DATA
    public_message = "the pod has no such dataset"


class EmptyDatasetError(DataError):
    """A dataset with no rows."""

    code = 2002
    abort_reason = AbortReason.NO_DATA
    public_message = "the dataset has no rows"
    detail_is_public = True


class NoNewDataError(DataError):
    """Every file of the dataset was already processed (run on new data only)."""

    code = 2003
    abort_reason = AbortReason.NO_NEW_DATA
    public_message = "every file of the dataset was already processed"
    detail_is_public = True


class TooManyFailuresError(DataError):
    """A batched task failed too many batches in a row, or nothing at all succeeded."""

    code = 2004
    public_message = "too many batches of the task failed"
    detail_is_public = True


class MissingColumnError(DataError, KeyError):
    """A column that the request needs is not in the dataset."""

    code = 2005
    abort_reason = AbortReason.INCOMPATIBLE_DATASOURCE
    public_message = "a column the task needs is not in the dataset"
    detail_is_public = True

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SchemaMismatchError(DataError):
    """The dataset does not match the schema the request declared."""

    code = 2006
    abort_reason = AbortReason.INCOMPATIBLE_DATASOURCE
    public_message = "the dataset does not fit the task"
    detail_is_public = True


# --- transport, hub and wire format (3xxx) ---------------------------------------------------


class TransportError(FedloomError):
    """A message could not be delivered."""

    code = 3000
    exit_code = ExitCode.TRANSPORT
    public_message = "a message could not be delivered"
    detail_is_public = True
    retryable = True


class MailboxClosedError(TransportError):
    """The mailbox or hub was closed by its owner."""

    code = 3001
    public_message = "the mailbox is closed"
    retryable = False


class UnknownRecipientError(TransportError):
    """A message addressed to an identity the hub does not know."""

    code = 3002
    public_message = "the recipient is not known to the hub"
    retryable = False


class ReceiveTimeoutError(TransportError, TimeoutError):
    """No matching message arrived within the time-out."""

    code = 3003
    public_message = "no message arrived in time"


class HubUnavailableError(TransportError):
    """The hub cannot be reached (refused connection, TLS failure, hub went away)."""

    code = 3004
    public_message = "the hub cannot be reached"


class WireError(FedloomError, ValueError):
    """Bytes that are not a valid fedloom message (truncated, lying, oversized, ...)."""

    code = 3100
    abort_reason = AbortReason.INVALID_TASK
    public_message = "a message is malformed"
    detail_is_public = True


class MessageTooLargeError(WireError):
    """A message whose declared size is above the configured cap."""

    code = 3101
    public_message = "a message is larger than the size cap"


# --- protocol and task (4xxx) ------------------------------------------------------------


class ProtocolError(FedloomError):
    """A party broke the conversation (unexpected message type, missing field, ...)."""

    code = 4000
    public_message = "a party broke the conversation"
    detail_is_public = True


class TaskAbortedError(FedloomError):
    """A task ended with TASK_ABORT; ``reason`` is an :class:`AbortReason`.

    Its text names the pod and what it said: not for other pods (fixed public text).
    """

    code = 4100
    exit_code = ExitCode.TASK_FAILED
    public_message = "the task was aborted"

    def __init__(self, reason: AbortReason, message: str, pod: str | None = None) -> None:
        where = f" on pod {pod!r}" if pod else ""
        super().__init__(f"task aborted{where}: {reason.value}: {message}")
        self.reason = reason
        self.message = message
        self.pod = pod


class TaskCancelledError(TaskAbortedError):
    """The modeller sent TASK_CANCEL; the pod answers TASK_ABORT(CANCELLED_BY_MODELLER)."""

    code = 4101
    abort_reason = AbortReason.CANCELLED_BY_MODELLER
    public_message = "the modeller cancelled the task"

    def __init__(self, message: str = "the modeller cancelled the task") -> None:
        super().__init__(AbortReason.CANCELLED_BY_MODELLER, message)


class ModellerTimeoutError(TaskAbortedError):
    """The pod gave up on the modeller (and tells it so, in case it comes back)."""

    code = 4102
    abort_reason = AbortReason.MODELLER_TIMEOUT
    public_message = "the pod gave up waiting for the modeller"

    def __init__(self, message: str) -> None:
        super().__init__(AbortReason.MODELLER_TIMEOUT, message)


class WorkerFailedError(TaskAbortedError):
    """The worker failed on this pod, and the modeller still has to be told.

    ``exception_type`` and ``traceback_summary`` are the child's (its bounded
    :meth:`ErrorReport.from_exception`), empty when the pod saw the failure from outside
    (a crash, a hang, the memory cap); ``reported_code`` is the catalogue code the child
    reported (None when it was not a fedloom error, or the pod saw the failure).
    """

    code = 4103
    public_message = "the task failed on the pod"

    def __init__(
        self,
        reason: AbortReason,
        message: str,
        exception_type: str = "",
        traceback_summary: str = "",
        reported_code: int | None = None,
    ) -> None:
        super().__init__(reason, message)
        self.exception_type = exception_type
        self.traceback_summary = traceback_summary
        self.reported_code = reported_code


class UpdateRejectionReason(StrEnum):
    """Why one pod's update was left out of an aggregate."""

    NON_FINITE = "NON_FINITE"
    WRONG_SHAPE = "WRONG_SHAPE"
    WRONG_DTYPE = "WRONG_DTYPE"
    UNKNOWN_KEYS = "UNKNOWN_KEYS"
    MISSING_KEYS = "MISSING_KEYS"
    BAD_WEIGHT = "BAD_WEIGHT"
    MALFORMED = "MALFORMED"


class UpdateRejectedError(FedloomError):
    """One pod's update cannot be aggregated; the aggregate goes on without it."""

    code = 4200
    abort_reason = AbortReason.UPDATE_REJECTED
    public_message = "an update could not be aggregated"

    def __init__(self, reason: UpdateRejectionReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}", public=reason.value)
        self.reason = reason
        self.detail = detail


class AggregationError(FedloomError):
    """No aggregate can be formed (for example: every update was rejected)."""

    code = 4201
    public_message = "no aggregate could be formed"


# --- privacy, access and authentication (5xxx) ---------------------------------------------


class PrivacyThresholdError(DataError):
    """A statistic would be computed over fewer rows than the pod allows."""

    code = 5000
    abort_reason = AbortReason.PRIVACY_THRESHOLD
    public_message = "too few rows to release the result under the pod's privacy policy"


class LimitsExceededError(FedloomError):
    """A model used up the pod's usage limit; the allowed results were still delivered."""

    code = 5001
    abort_reason = AbortReason.LIMITS_EXCEEDED
    public_message = "the model used up the pod's usage limit"


class AccessDeniedError(FedloomError):
    """A pod's policy does not allow this modeller, protocol or algorithm."""

    code = 5100
    exit_code = ExitCode.DENIED
    abort_reason = AbortReason.NO_ACCESS
    public_message = "access denied"
    detail_is_public = True


class UnknownIdentityError(AccessDeniedError):
    """An identity the hub (or a pod) has not been told about."""

    code = 5101
    public_message = "the identity is not known"


class RouteRefusedError(AccessDeniedError):
    """The hub does not carry messages between this sender and this recipient: two
    identities of one role (pod to pod, modeller to modeller), or a pod and a modeller
    the pod does not accept."""

    code = 5102
    public_message = "the hub does not carry messages on this route"


class AuthenticationError(WireError):
    """Received data failed authentication; nothing from it may be used."""

    code = 5200
    exit_code = ExitCode.DENIED
    abort_reason = AbortReason.UNAUTHORISED
    public_message = "data failed authentication"


class BadSignatureError(AuthenticationError):
    """A signature does not match the data and the claimed signer."""

    code = 5201
    public_message = "a signature does not match"


class ReplayedMessageError(AuthenticationError):
    """A message whose sequence number is not above the last one seen from its sender."""

    code = 5202
    public_message = "a message was replayed"


class StaleMessageError(AuthenticationError):
    """A message whose timestamp lies outside the accepted clock window."""

    code = 5203
    public_message = "a message's timestamp is outside the accepted clock window"


class DecryptionError(AuthenticationError):
    """A ciphertext or wrapped key was tampered with, or is for someone else."""

    code = 5204
    public_message = "a message could not be decrypted"


# --- runtime: simulation, scheduling and storage (6xxx) --------------------------------------


class SimulationError(FedloomError):
    """A simulation could not go on (for example: a client failed on every try)."""

    code = 6000
    public_message = "the simulation could not go on"


class WorkerLostError(SimulationError):
    """A simulation worker process died; its clients are re-run on a replacement."""

    code = 6001
    public_message = "a simulation worker process died"
    retryable = True


class InsufficientResourcesError(FedloomError):
    """A task asks for more than the machine (or the configured budget) could ever give."""

    code = 6100
    public_message = "the task needs more resources than the machine can give"


class StoreError(FedloomError):
    """The store could not complete an operation; nothing was half-written."""

    code = 6200
    public_message = "the store could not complete an operation"


class SchemaVersionError(StoreError):
    """The store file was written by a newer or unknown schema version."""

    code = 6201
    public_message = "the store was written by another schema version"


class NotFoundError(StoreError, LookupError):
    """A record (experiment, round, checkpoint, ...) that does not exist."""

    code = 6202
    public_message = "the record does not exist"


# --- the catalogue -------------------------------------------------------------------------


def error_class(code: int) -> type[FedloomError] | None:
    """The error class catalogued under ``code`` (None when no class has it)."""
    return _BY_CODE.get(code)


def catalogue() -> dict[int, type[FedloomError]]:
    """Every catalogued error class by code, in code order."""
    return dict(sorted(_BY_CODE.items()))


def error_from_public(code: object, text: str) -> FedloomError:
    """Rebuild the typed error a peer reported as its ``code`` and public ``text``.

    A class whose constructor takes more than a message becomes its nearest catalogued
    ancestor that takes one. An unknown or malformed code is a :class:`ProtocolError`
    that names it; this never raises.
    """
    found = _BY_CODE.get(code) if isinstance(code, int) and not isinstance(code, bool) else None
    if found is None:
        return ProtocolError(f"error with unknown code {code!r}: {text}")
    for cls in found.__mro__:
        if issubclass(cls, FedloomError) and cls.__init__ is FedloomError.__init__:
            return cls(text)
    return FedloomError(text)  # unreachable: FedloomError itself takes a message
