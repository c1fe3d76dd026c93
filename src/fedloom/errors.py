"""The fedloom error tree, the catalogues of abort reasons and exit codes, and how an
out-of-memory failure is told apart from any other (:func:`is_out_of_memory`).

Every failure fedloom raises on purpose is a :class:`FedloomError`. Each subclass names one
kind of failure; callers catch the most specific one they can handle. Only
:attr:`FedloomError.public_text` ever crosses the network: it is the message, never a
traceback or a repr of local state.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from enum import IntEnum, StrEnum


class FedloomError(Exception):
    """Base class of every error fedloom raises on purpose."""

    retryable: bool = False

    @property
    def public_text(self) -> str:
        """The message that may be shown to a remote party."""
        return str(self)


# --- configuration and registries -------------------------------------------------------


class ConfigError(FedloomError, ValueError):
    """A configuration value is missing, of the wrong type, or out of range."""


class RegistryError(FedloomError):
    """A name could not be resolved in a closed registry."""


class UnknownNameError(RegistryError, KeyError):
    """The name is not registered (and nothing was imported to look for it)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(RegistryError):
    """A second registration under a name that is already taken."""


# --- wire format -----------------------------------------------------------------------


class WireError(FedloomError, ValueError):
    """Bytes that are not a valid fedloom message (truncated, lying, oversized, ...)."""


class MessageTooLargeError(WireError):
    """A message whose declared size is above the configured cap."""


# --- data ------------------------------------------------------------------------------


class DataError(FedloomError):
    """A dataset could not be used."""


class DatasetNotFoundError(DataError, LookupError):
    """A dataset name or file that does not exist."""


class EmptyDatasetError(DataError):
    """A dataset with no rows."""


class NoNewDataError(DataError):
    """Every file of the dataset was already processed (run on new data only)."""


class TooManyFailuresError(DataError):
    """A batched task failed too many batches in a row, or nothing at all succeeded."""


class LimitsExceededError(FedloomError):
    """A model used up the pod's usage limit; the allowed results were still delivered."""


class MissingColumnError(DataError, KeyError):
    """A column that the request needs is not in the dataset."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class SchemaMismatchError(DataError):
    """The dataset does not match the schema the request declared."""


class PrivacyThresholdError(DataError):
    """A statistic would be computed over fewer rows than the pod allows."""


# --- aggregation -----------------------------------------------------------------------


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

    def __init__(self, reason: UpdateRejectionReason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


class AggregationError(FedloomError):
    """No aggregate can be formed (for example: every update was rejected)."""


# --- simulation and scheduling ----------------------------------------------------------


class ResourceSpecError(ConfigError):
    """A resource estimate could not be read (for example ``"12 parsecs"`` as a size)."""


class InsufficientResourcesError(FedloomError):
    """A task asks for more than the machine (or the configured budget) could ever give."""


class SimulationError(FedloomError):
    """A simulation could not go on (for example: a client failed on every try)."""


class WorkerLostError(SimulationError):
    """A simulation worker process died; its clients are re-run on a replacement."""

    retryable = True


# --- storage ---------------------------------------------------------------------------


class StoreError(FedloomError):
    """The store could not complete an operation; nothing was half-written."""


class SchemaVersionError(StoreError):
    """The store file was written by a newer or unknown schema version."""


class NotFoundError(StoreError, LookupError):
    """A record (experiment, round, checkpoint, ...) that does not exist."""


# --- transport and runtime -------------------------------------------------------------


class TransportError(FedloomError):
    """A message could not be delivered."""

    retryable = True


class MailboxClosedError(TransportError):
    """The mailbox or hub was closed by its owner."""

    retryable = False


class UnknownRecipientError(TransportError):
    """A message addressed to an identity the hub does not know."""

    retryable = False


class ReceiveTimeoutError(TransportError, TimeoutError):
    """No matching message arrived within the time-out."""


class HubUnavailableError(TransportError):
    """The hub cannot be reached (refused connection, TLS failure, hub went away)."""


class AccessDeniedError(FedloomError):
    """A pod's policy does not allow this modeller, protocol or algorithm."""


class UnknownIdentityError(AccessDeniedError):
    """An identity the hub (or a pod) has not been told about."""


class RouteRefusedError(AccessDeniedError):
    """The hub does not carry messages between this sender and this recipient: two
    identities of one role (pod to pod, modeller to modeller), or a pod and a modeller
    the pod does not accept."""


# --- cryptography ------------------------------------------------------------------------


class KeyFileError(ConfigError):
    """A key or certificate file is missing, unreadable or malformed."""


class InsecureKeyFileError(KeyFileError):
    """A private key file is readable by others than its owner (chmod 600 it)."""


class AuthenticationError(WireError):
    """Received data failed authentication; nothing from it may be used."""


class BadSignatureError(AuthenticationError):
    """A signature does not match the data and the claimed signer."""


class ReplayedMessageError(AuthenticationError):
    """A message whose sequence number is not above the last one seen from its sender."""


class StaleMessageError(AuthenticationError):
    """A message whose timestamp lies outside the accepted clock window."""


class DecryptionError(AuthenticationError):
    """A ciphertext or wrapped key was tampered with, or is for someone else."""


class ProtocolError(FedloomError):
    """A party broke the conversation (unexpected message type, missing field, ...)."""


class TaskAbortedError(FedloomError):
    """A task ended with TASK_ABORT; ``reason`` is an :class:`AbortReason`."""

    def __init__(self, reason: AbortReason, message: str, pod: str | None = None) -> None:
        where = f" on pod {pod!r}" if pod else ""
        super().__init__(f"task aborted{where}: {reason.value}: {message}")
        self.reason = reason
        self.message = message
        self.pod = pod


class TaskCancelledError(TaskAbortedError):
    """The modeller sent TASK_CANCEL; the pod answers TASK_ABORT(CANCELLED_BY_MODELLER)."""

    def __init__(self, message: str = "the modeller cancelled the task") -> None:
        super().__init__(AbortReason.CANCELLED_BY_MODELLER, message)


class PodResponseError(FedloomError):
    """Pods rejected a task or did not answer, where the request policy needed them."""

    def __init__(self, message: str, failed_pods: dict[str, str]) -> None:
        listing = ", ".join(f"{pod} ({why})" for pod, why in sorted(failed_pods.items()))
        super().__init__(f"{message}: {listing}" if listing else message)
        self.failed_pods = dict(failed_pods)


# --- catalogues ------------------------------------------------------------------------


class AbortReason(StrEnum):
    """Closed set of reasons carried by JOB_REJECT and TASK_ABORT."""

    NO_ACCESS = "NO_ACCESS"
    UNAUTHORISED = "UNAUTHORISED"
    NO_DATA = "NO_DATA"
    INCOMPATIBLE_DATASOURCE = "INCOMPATIBLE_DATASOURCE"
    INVALID_TASK = "INVALID_TASK"
    PRIVACY_THRESHOLD = "PRIVACY_THRESHOLD"
    WORKER_ERROR = "WORKER_ERROR"
    WORKER_UNRESPONSIVE = "WORKER_UNRESPONSIVE"
    WORKER_CRASHED = "WORKER_CRASHED"
    WORKER_OUT_OF_MEMORY = "WORKER_OUT_OF_MEMORY"
    NO_NEW_DATA = "NO_NEW_DATA"
    LIMITS_EXCEEDED = "LIMITS_EXCEEDED"
    MODELLER_TIMEOUT = "MODELLER_TIMEOUT"
    CANCELLED_BY_MODELLER = "CANCELLED_BY_MODELLER"

    @property
    def help_text(self) -> str:
        return _ABORT_HELP[self]


_ABORT_HELP: dict[AbortReason, str] = {
    AbortReason.NO_ACCESS: "The pod does not accept this protocol, algorithm or modeller.",
    AbortReason.UNAUTHORISED: "The request was not signed by an identity the pod trusts.",
    AbortReason.NO_DATA: "The pod has no dataset under the requested name, or it is empty.",
    AbortReason.INCOMPATIBLE_DATASOURCE: "The dataset does not fit the task (columns, schema).",
    AbortReason.INVALID_TASK: "The task definition could not be rebuilt or failed validation.",
    AbortReason.PRIVACY_THRESHOLD: "Too few rows to release the result under the pod's policy.",
    AbortReason.WORKER_ERROR: "The task raised an error while running on the pod.",
    AbortReason.WORKER_UNRESPONSIVE: "The pod's worker stopped answering.",
    AbortReason.WORKER_CRASHED: "The pod's worker process died (exit code or signal).",
    AbortReason.WORKER_OUT_OF_MEMORY: (
        "The task ran out of memory (system or GPU), or used more than the pod allows."
    ),
    AbortReason.NO_NEW_DATA: "There is no data the task has not already processed.",
    AbortReason.LIMITS_EXCEEDED: "The model used up the pod's usage limit.",
    AbortReason.MODELLER_TIMEOUT: "The modeller did not answer in time.",
    AbortReason.CANCELLED_BY_MODELLER: "The modeller cancelled the task.",
}


# --- out of memory ---------------------------------------------------------------------

_OOM_PHRASES = ("out of memory", "not enough memory")
"""RuntimeError texts of allocators: CUDA/MPS ("CUDA out of memory. Tried to allocate
...") and torch's CPU allocator ("DefaultCPUAllocator: not enough memory: ...")."""


def _torch_oom_class() -> type[BaseException] | None:
    torch = sys.modules.get("torch")  # never import torch only to ask this
    cuda = getattr(torch, "cuda", None)
    found = getattr(cuda, "OutOfMemoryError", None)
    return found if isinstance(found, type) and issubclass(found, BaseException) else None


def _is_torch_oom(exc: BaseException) -> bool:
    torch_oom = _torch_oom_class()
    if torch_oom is not None and isinstance(exc, torch_oom):
        return True
    return any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__)


def _one_is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError) or _is_torch_oom(exc):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(phrase in text for phrase in _OOM_PHRASES)
    return False


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors it was explicitly raised from (``raise ... from``)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__
    return chain


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) means memory ran out.

    True for :class:`MemoryError`, ``torch.cuda.OutOfMemoryError``, and a RuntimeError
    whose message says "out of memory" or "not enough memory" (CUDA and CPU allocators).
    """
    return any(_one_is_out_of_memory(error) for error in _chain(exc))


def is_device_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error of a GPU rather than of system memory."""
    for error in _chain(exc):
        if _is_torch_oom(error):
            return True
        if isinstance(error, RuntimeError) and not isinstance(error, MemoryError):
            text = str(error).lower()
            if "cuda" in text and any(phrase in text for phrase in _OOM_PHRASES):
                return True
    return False


def abort_reason_for(error: BaseException) -> AbortReason:
    """The abort reason that best describes ``error`` (WORKER_ERROR when none fits)."""
    if isinstance(error, TaskAbortedError):
        return error.reason
    if isinstance(error, AuthenticationError):
        return AbortReason.UNAUTHORISED
    if isinstance(error, AccessDeniedError):
        return AbortReason.NO_ACCESS
    if isinstance(error, PrivacyThresholdError):
        return AbortReason.PRIVACY_THRESHOLD
    if isinstance(error, NoNewDataError):
        return AbortReason.NO_NEW_DATA
    if isinstance(error, LimitsExceededError):
        return AbortReason.LIMITS_EXCEEDED
    if isinstance(error, DatasetNotFoundError | EmptyDatasetError):
        return AbortReason.NO_DATA
    if isinstance(error, MissingColumnError | SchemaMismatchError):
        return AbortReason.INCOMPATIBLE_DATASOURCE
    if isinstance(error, RegistryError | ConfigError | WireError):
        return AbortReason.INVALID_TASK
    if is_out_of_memory(error):
        return AbortReason.WORKER_OUT_OF_MEMORY
    return AbortReason.WORKER_ERROR


class ExitCode(IntEnum):
    """Process exit codes of the ``fedloom`` command line."""

    SUCCESS = 0
    ERROR = 1
    USAGE = 2
    CONFIG = 3
    DATA = 4
    TASK_FAILED = 5
    INTERRUPTED = 130

    @property
    def help_text(self) -> str:
        return _EXIT_HELP[self]


_EXIT_HELP: dict[ExitCode, str] = {
    ExitCode.SUCCESS: "Finished normally.",
    ExitCode.ERROR: "An unexpected error; the message says what happened.",
    ExitCode.USAGE: "The command line was not understood.",
    ExitCode.CONFIG: "A configuration value was wrong; fix it and run again.",
    ExitCode.DATA: "A dataset was missing, empty or did not fit the task.",
    ExitCode.TASK_FAILED: "The federated task was rejected or aborted by the pods.",
    ExitCode.INTERRUPTED: "Stopped by the user (SIGINT).",
}


def exit_code_for(error: BaseException) -> ExitCode:
    """The exit code the command line uses for ``error``."""
    if isinstance(error, ConfigError | RegistryError):
        return ExitCode.CONFIG
    if isinstance(error, DataError):
        return ExitCode.DATA
    if isinstance(error, TaskAbortedError | PodResponseError):
        return ExitCode.TASK_FAILED
    if isinstance(error, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    return ExitCode.ERROR


@dataclass(frozen=True)
class ErrorReport:
    """A bounded, network-safe description of a failure (for TASK_ABORT bodies)."""

    reason: AbortReason
    message: str
    exception_type: str
    traceback_summary: str

    MAX_MESSAGE_CHARS = 2_000
    MAX_TRACEBACK_CHARS = 4_000

    @classmethod
    def from_exception(cls, error: BaseException, reason: AbortReason | None = None) -> ErrorReport:
        import traceback

        frames = traceback.extract_tb(error.__traceback__)[-8:]
        summary = "".join(
            f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} in {f.name}\n" for f in frames
        )
        text = error.public_text if isinstance(error, FedloomError) else str(error)
        return cls(
            reason=reason or abort_reason_for(error),
            message=text[: cls.MAX_MESSAGE_CHARS],
            exception_type=type(error).__name__,
            traceback_summary=summary[-cls.MAX_TRACEBACK_CHARS :],
        )

    def to_body(self) -> dict[str, str]:
        return {
            "reason": self.reason.value,
            "message": self.message,
            "exception_type": self.exception_type,
            "traceback_summary": self.traceback_summary,
        }

    @classmethod
    def from_body(cls, body: object) -> ErrorReport:
        """Rebuild a report from a received body; a malformed body raises ProtocolError."""
        if not isinstance(body, dict):
            raise ProtocolError("an error report body must be a map")
        try:
            reason = AbortReason(str(body.get("reason")))
        except ValueError as exc:
            raise ProtocolError(f"unknown abort reason {body.get('reason')!r}") from exc
        fields = {}
        for key in ("message", "exception_type", "traceback_summary"):
            value = body.get(key, "")
            if not isinstance(value, str):
                raise ProtocolError(f"error report field {key!r} must be a string")
            fields[key] = value
        return cls(
            reason=reason,
            message=fields["message"][: cls.MAX_MESSAGE_CHARS],
            exception_type=fields["exception_type"][:200],
            traceback_summary=fields["traceback_summary"][: cls.MAX_TRACEBACK_CHARS],
        )
