"""The error tree behind :mod:`fedloom.errors` (which documents the catalogue's rules).

Every class with its code, exit code, abort reason and public text. Import the errors from
:mod:`fedloom.errors`.

This module holds the root and the families of what is given or carried: configuration and
registries (1xxx), data (2xxx), transport, hub and wire format (3xxx).
:mod:`fedloom._error_tree_tasks` holds the rest and the catalogue.
"""

from __future__ import annotations

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
    """A dataset name or file that does not exist.

    Its message may name a path: raisers give a ``public=`` text.
    """

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
