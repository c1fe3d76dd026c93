"""The error catalogue: stable unique codes, consistent exit codes and abort reasons, public
texts that keep local detail home, and every error exported from ``fedloom.errors``."""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import fedloom
from fedloom import errors
from fedloom.errors import (
    AbortReason,
    DatasetNotFoundError,
    ErrorReport,
    ExitCode,
    FedloomError,
    KeyFileError,
    PodFailure,
    PodResponseError,
    PrivacyThresholdError,
    TaskAbortedError,
    abort_reason_for,
    catalogue,
    error_class,
    error_from_public,
    exit_code_for,
)

CODES = {
    "ConfigError": 1000,
    "ResourceSpecError": 1001,
    "KeyFileError": 1010,
    "InsecureKeyFileError": 1011,
    "RegistryError": 1100,
    "UnknownNameError": 1101,
    "DuplicateNameError": 1102,
    "DataError": 2000,
    "DatasetNotFoundError": 2001,
    "EmptyDatasetError": 2002,
    "NoNewDataError": 2003,
    "TooManyFailuresError": 2004,
    "MissingColumnError": 2005,
    "SchemaMismatchError": 2006,
    "TransportError": 3000,
    "MailboxClosedError": 3001,
    "UnknownRecipientError": 3002,
    "ReceiveTimeoutError": 3003,
    "HubUnavailableError": 3004,
    "WireError": 3100,
    "MessageTooLargeError": 3101,
    "ProtocolError": 4000,
    "TaskAbortedError": 4100,
    "TaskCancelledError": 4101,
    "ModellerTimeoutError": 4102,
    "WorkerFailedError": 4103,
    "UpdateRejectedError": 4200,
    "AggregationError": 4201,
    "PodResponseError": 4300,
    "PrivacyThresholdError": 5000,
    "LimitsExceededError": 5001,
    "AccessDeniedError": 5100,
    "UnknownIdentityError": 5101,
    "RouteRefusedError": 5102,
    "AuthenticationError": 5200,
    "BadSignatureError": 5201,
    "ReplayedMessageError": 5202,
    "StaleMessageError": 5203,
    "DecryptionError": 5204,
    "SimulationError": 6000,
    "WorkerLostError": 6001,
    "InsufficientResourcesError": 6100,
    "StoreError": 6200,
    "SchemaVersionError": 6201,
    "NotFoundError": 6202,
    "FedloomError": 9000,
}
"""The published codes. A code is never changed or reused: add new ones, never edit these."""

EXIT_CODES = {"SUCCESS": 0, "ERROR": 1, "USAGE": 2, "CONFIG": 3, "DATA": 4, "TASK_FAILED": 5}
EXIT_CODES |= {"TRANSPORT": 6, "DENIED": 7, "INTERRUPTED": 130}

FAMILIES = {1: "configuration", 2: "data", 3: "transport", 4: "protocol", 5: "privacy"}
FAMILIES |= {6: "runtime", 9: "base"}


def _subclasses(cls: type[FedloomError]) -> Iterator[type[FedloomError]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


def _every_error_class() -> set[type[FedloomError]]:
    for module in pkgutil.walk_packages(fedloom.__path__, "fedloom."):
        if not module.name.endswith("__main__"):  # runs the command line
            importlib.import_module(module.name)
    found = {cls for cls in _subclasses(FedloomError) if cls.__module__.startswith("fedloom")}
    return found | {FedloomError}


_BUILDERS: dict[str, Callable[[str], FedloomError]] = {
    "TaskAbortedError": lambda text: TaskAbortedError(AbortReason.NO_DATA, text),
    "WorkerFailedError": lambda text: errors.WorkerFailedError(AbortReason.WORKER_CRASHED, text),
    "UpdateRejectedError": lambda text: errors.UpdateRejectedError(
        errors.UpdateRejectionReason.MALFORMED, text
    ),
    "PodResponseError": lambda text: PodResponseError(text, {}),
}
"""The classes whose constructors take more than a message."""


def _instance(cls: type[FedloomError], text: str) -> FedloomError:
    builder = _BUILDERS.get(cls.__name__)
    return cls(text) if builder is None else builder(text)


def test_codes_are_stable_and_unique() -> None:
    assert {cls.__name__: code for code, cls in catalogue().items()} == CODES
    assert len(set(CODES.values())) == len(CODES)
    assert all(error_class(code) is getattr(errors, name) for name, code in CODES.items())
    assert error_class(1) is None


def test_every_fedloom_error_has_its_own_code_and_is_exported() -> None:
    classes = _every_error_class()
    assert {cls.__name__ for cls in classes} == set(CODES)
    for cls in classes:
        assert "code" in vars(cls), f"{cls.__qualname__} must declare its own code"
        assert cls.code // 1000 in FAMILIES, cls
        assert cls.__name__ in errors.__all__ and getattr(errors, cls.__name__) is cls


def test_errors_all_is_sorted_and_resolves() -> None:
    assert list(errors.__all__) == sorted(errors.__all__)
    assert all(hasattr(errors, name) for name in errors.__all__)


def test_a_second_class_cannot_take_a_code() -> None:
    with pytest.raises(TypeError, match="taken by ConfigError"):
        type("Impostor", (FedloomError,), {"code": 1000})


def test_a_plugins_subclass_without_a_code_is_catalogued_as_its_parent() -> None:
    plugin = type("PluginDataError", (DatasetNotFoundError,), {})
    assert plugin.code == DatasetNotFoundError.code
    assert error_class(plugin.code) is DatasetNotFoundError


def test_exit_codes_are_numbered_with_help() -> None:
    assert {code.name: int(code) for code in ExitCode} == EXIT_CODES
    assert all(code.help_text for code in ExitCode)
    assert all(reason.help_text for reason in AbortReason)


@pytest.mark.parametrize("name", sorted(CODES))
def test_exit_code_and_abort_reason_come_from_the_catalogue(name: str) -> None:
    cls = getattr(errors, name)
    error = _instance(cls, "x")
    assert isinstance(cls.exit_code, ExitCode) and isinstance(cls.abort_reason, AbortReason)
    assert exit_code_for(error) is cls.exit_code
    expected = error.reason if isinstance(error, TaskAbortedError) else cls.abort_reason
    assert abort_reason_for(error) is expected
    assert ErrorReport.from_exception(error).code == cls.code


@pytest.mark.parametrize("name", sorted(CODES))
def test_a_private_message_never_becomes_public(name: str) -> None:
    cls = getattr(errors, name)
    secret = "/srv/pod/data/patients.csv holds 3 rows"
    error = _instance(cls, secret)
    assert cls.public_message and secret not in cls.public_message
    if cls.detail_is_public:
        assert secret in error.public_text()
    else:
        assert secret not in error.public_text()
        assert error.public_text() == (error.public or cls.public_message)


def test_a_raiser_may_give_a_safe_public_text() -> None:
    error = DatasetNotFoundError("no such data file: '/srv/x.csv'", public="no such data file")
    assert str(error) == "no such data file: '/srv/x.csv'"
    report = ErrorReport.from_exception(error)
    assert (report.message, report.reason, report.code) == ("no such data file", "NO_DATA", 2001)


def test_local_detail_stays_home() -> None:
    for error in (KeyFileError("/home/me/pod.key: bad"), PrivacyThresholdError("3 rows < 10")):
        assert ErrorReport.from_exception(error).message == type(error).public_message


def test_reports_carry_the_code_and_reject_a_malformed_one() -> None:
    report = ErrorReport.from_exception(KeyFileError("x"))
    assert ErrorReport.from_body(report.to_body()) == report
    assert "code" not in ErrorReport.from_exception(RuntimeError("boom")).to_body()
    with pytest.raises(errors.ProtocolError, match="'code'"):
        ErrorReport.from_body({**report.to_body(), "code": "1010"})


def test_a_reported_code_rebuilds_its_class() -> None:
    assert type(error_from_public(5201, "no")) is errors.BadSignatureError
    # a class that takes more than a message becomes its nearest ancestor that takes one
    assert type(error_from_public(4101, "no")) is FedloomError
    assert type(error_from_public(12345, "no")) is errors.ProtocolError


def test_pod_response_errors_keep_each_pods_report_typed() -> None:
    report = ErrorReport(AbortReason.NO_DATA, "no such data file", "DatasetNotFoundError", "", 2001)
    error = PodResponseError(
        "task 't' could not start",
        {"pod-b": PodFailure.from_report(report), "pod-a": "no answer within 5 s"},
    )
    assert error.reports == {
        "pod-a": PodFailure("no answer within 5 s"),
        "pod-b": PodFailure("no such data file", AbortReason.NO_DATA, 2001),
    }
    assert error.failed_pods == {
        "pod-a": "no answer within 5 s",
        "pod-b": "NO_DATA: no such data file",
    }
    assert str(error) == (
        "task 't' could not start: pod-a (no answer within 5 s), pod-b (NO_DATA: no such data file)"
    )
    assert "pod-b" not in error.public_text()  # other pods never read who failed


_EXIT_CALL = re.compile(r"(?:sys\.exit|typer\.Exit|SystemExit)\((?P<argument>[^)]*\)?)\)")


def test_the_command_line_exits_only_with_catalogued_codes() -> None:
    folder = Path(fedloom.__file__).parent / "cli"
    calls = [
        match["argument"]
        for path in sorted(folder.glob("*.py"))
        for match in _EXIT_CALL.finditer(path.read_text())
    ]
    assert calls, "the command line must map errors to exit codes"
    for argument in calls:
        assert argument.startswith(("int(ExitCode.", "int(exit_code_for(")), argument
