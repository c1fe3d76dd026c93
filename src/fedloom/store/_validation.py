"""Argument checks shared by every store implementation.

Each check either returns a plain copy of a valid value or raises the error the store
contracts promise (ConfigError for bad values, NotFoundError for ids that cannot exist),
before anything is written.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedloom.errors import ConfigError, NotFoundError, StoreError
from fedloom.store._base import (
    FAILED_FILE_LEVELS,
    MAX_FILE_NAME_LENGTH,
    MAX_ROUND_INDEX,
    TASK_RUN_STATUSES,
    FailedFile,
)
from fedloom.store._jsonable import check_jsonable


def check_text(value: object, what: str, *, allow_empty: bool = False) -> str:
    """``value`` if it is a str (non-empty unless allowed), else ConfigError."""
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a str, got {type(value).__name__}")
    if not value and not allow_empty:
        raise ConfigError(f"{what} must not be empty")
    return value


def check_id(value: object, kind: str) -> str:
    """An id to look up; anything that is not a str cannot name a record (NotFoundError)."""
    if not isinstance(value, str):
        raise NotFoundError(f"no {kind} with id {value!r} (ids are str)")
    return value


def check_round_index(value: object) -> int:
    """``value`` if it is an int in [0, MAX_ROUND_INDEX] (bool refused), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"round_index must be an int, got {type(value).__name__}")
    index = int(value)
    if not 0 <= index <= MAX_ROUND_INDEX:
        raise ConfigError(f"round_index must be between 0 and {MAX_ROUND_INDEX}, got {index}")
    return index


def check_status(value: object, allowed: tuple[str, ...], what: str) -> str:
    """``value`` if it is one of ``allowed``, else ConfigError listing them."""
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"{what} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def check_metrics(values: object, what: str) -> dict[str, float]:
    """A plain copy of ``{name: finite real}``; ConfigError naming the first bad entry."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{what} must be a mapping of metric name to number")
    checked: dict[str, float] = {}
    for name, value in values.items():
        if not isinstance(name, str):
            raise ConfigError(f"{what} has a metric name {name!r} that is not a str")
        where = f"{what}[{name!r}]"
        if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{where} must be a real number, got {type(value).__name__}")
        try:
            number = float(value)
        except OverflowError as exc:
            raise ConfigError(f"{where} is too large to store as a float") from exc
        if not math.isfinite(number):
            raise ConfigError(f"{where} must be finite, got {number}")
        checked[name] = number
    return checked


def check_per_pod_metrics(values: object) -> dict[str, dict[str, float]]:
    """A plain copy of ``{pod: {name: finite real}}``; ConfigError naming the first bad entry."""
    if not isinstance(values, Mapping):
        raise ConfigError("per_pod must be a mapping of pod name to metrics")
    checked: dict[str, dict[str, float]] = {}
    for pod, metrics in values.items():
        if not isinstance(pod, str):
            raise ConfigError(f"per_pod has a pod name {pod!r} that is not a str")
        checked[pod] = check_metrics(metrics, f"per_pod[{pod!r}]")
    return checked


def check_same_origin(task_id: str, recorded: tuple[str, str], given: tuple[str, str]) -> None:
    """StoreError if a task id recorded for one (modeller, protocol) is reused by another."""
    if recorded != given:
        raise StoreError(
            f"task {task_id!r} was recorded for modeller {recorded[0]!r} and protocol "
            f"{recorded[1]!r}; it cannot be updated for {given[0]!r} and {given[1]!r}"
        )


def to_json(value: object, what: str) -> str:
    """The JSON text of a mapping; ConfigError naming the first key JSON cannot hold.

    Only str keys, finite floats, and dict/list/tuple containers are accepted, so that what
    is read back equals what was written (a tuple reads back as a list).
    """
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a mapping, got {type(value).__name__}")
    plain = dict(value)
    check_jsonable(plain, what)
    return json.dumps(plain, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def from_json(text: str | None) -> Any:
    """The value of JSON text written by :func:`to_json` (None stays None)."""
    return None if text is None else json.loads(text)


def check_task_run(
    task_id: str,
    modeller: str,
    protocol: str,
    status: str,
    *,
    reason: str | None,
    result: Mapping[str, Any] | None,
) -> str | None:
    """Validate a ``record_task_run`` call; return the result as JSON (``None`` if absent).

    Raises:
        ConfigError: an empty id, modeller or protocol, an unknown status, or a result
            that is not JSON.
    """
    check_text(task_id, "task_id")
    check_text(modeller, "modeller")
    check_text(protocol, "protocol")
    check_status(status, TASK_RUN_STATUSES, "task run status")
    if reason is not None:
        check_text(reason, "reason", allow_empty=True)
    return None if result is None else to_json(result, "result")


_TASK_HASH = re.compile(r"[0-9a-f]{64}")
#: SQLite's INTEGER range; usage totals and mtimes must fit in it.
_MAX_INT64 = 2**63 - 1


def check_task_hash(value: object) -> str:
    """``value`` if it is 64 lowercase hex characters (a :func:`task_hash`), else ConfigError."""
    if not isinstance(value, str) or _TASK_HASH.fullmatch(value) is None:
        raise ConfigError(
            f"task_hash must be 64 lowercase hex characters, got {value!r}; "
            "compute it with fedloom.store.task_hash(task, datasource)"
        )
    return value


def check_file_name(value: object, where: str) -> str:
    """A non-empty, valid Unicode str of at most MAX_FILE_NAME_LENGTH chars, else ConfigError."""
    name = check_text(value, where)
    if len(name) > MAX_FILE_NAME_LENGTH:
        raise ConfigError(
            f"{where} is {len(name)} characters long; at most {MAX_FILE_NAME_LENGTH} are kept"
        )
    check_unicode(name, where)
    return name


def check_unicode(value: str, where: str) -> None:
    """ConfigError if ``value`` holds a NUL or a lone surrogate, which SQLite text cannot keep."""
    if "\x00" in value:
        raise ConfigError(f"{where} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(
            f"{where} is not valid Unicode ({exc.reason}); decode file names before recording"
        ) from exc


def check_count(value: object, what: str, *, maximum: int = _MAX_INT64) -> int:
    """``value`` as an int in [0, maximum] (bool refused), else ConfigError."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ConfigError(f"{what} must be an int, got {type(value).__name__}")
    number = int(value)
    if not 0 <= number <= maximum:
        raise ConfigError(f"{what} must be between 0 and {maximum}, got {number}")
    return number


def check_processed_files(task_hash: object, files: object) -> list[tuple[str, int]]:
    """Validate a ``record_processed_files`` call; return plain ``(name, mtime_ns)`` pairs.

    Raises:
        ConfigError: a bad task hash, ``files`` not a sequence of pairs, or a bad pair.
    """
    check_task_hash(task_hash)
    checked: list[tuple[str, int]] = []
    for position, entry in enumerate(_entries(files, "files")):
        where = f"files[{position}]"
        if not isinstance(entry, tuple | list) or len(entry) != 2:
            raise ConfigError(f"{where} must be a (name, mtime_ns) pair, got {entry!r}")
        name = check_file_name(entry[0], f"{where} name")
        checked.append((name, check_count(entry[1], f"{where} mtime_ns ({name!r})")))
    return checked


def check_failed_files(task_hash: object, failures: object) -> list[FailedFile]:
    """Validate a ``record_failed_files`` call; return plain copies of the failures.

    Raises:
        ConfigError: a bad task hash, ``failures`` not a sequence of FailedFile, or a bad field.
    """
    check_task_hash(task_hash)
    checked: list[FailedFile] = []
    for position, entry in enumerate(_entries(failures, "failures")):
        where = f"failures[{position}]"
        if not isinstance(entry, FailedFile):
            raise ConfigError(f"{where} must be a FailedFile, got {type(entry).__name__}")
        name = check_file_name(entry.name, f"{where}.name")
        for field, value in (("reason", entry.reason), ("exception_type", entry.exception_type)):
            label = f"{where}.{field}"
            check_unicode(check_text(value, label, allow_empty=True), label)
        level = check_status(entry.level, FAILED_FILE_LEVELS, f"{where}.level")
        recorded_at = check_metrics({"recorded_at": entry.recorded_at}, where)["recorded_at"]
        checked.append(FailedFile(name, entry.reason, entry.exception_type, level, recorded_at))
    return checked


def check_model(value: object) -> str:
    """``value`` if it is a non-empty, valid Unicode str naming a model, else ConfigError."""
    model = check_text(value, "model")
    check_unicode(model, "model")
    return model


def _entries(values: object, what: str) -> Sequence[object]:
    if isinstance(values, str | bytes | bytearray) or not isinstance(values, Sequence):
        raise ConfigError(f"{what} must be a list or tuple, got {type(values).__name__}")
    return values
