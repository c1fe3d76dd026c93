"""The error families of running a task, and the catalogue of the whole tree.

Protocol and task (4xxx), privacy, access and authentication (5xxx), runtime: simulation,
scheduling and storage (6xxx); the root and the 1xxx-3xxx families are in
:mod:`fedloom._error_tree`. Import the errors from :mod:`fedloom.errors`.
"""

from __future__ import annotations

from enum import StrEnum

from fedloom._error_codes import AbortReason, ExitCode
from fedloom._error_tree import _BY_CODE, DataError, FedloomError, WireError

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
    """The hub does not carry messages between this sender and this recipient.

    Either two identities of one role (pod to pod, modeller to modeller), or a pod and a
    modeller the pod does not accept.
    """

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
