"""Argument checks shared by every store implementation.

Each check either returns a plain copy of a valid value or raises the error the store
contracts promise (ConfigError for bad values, NotFoundError for ids that cannot exist),
before anything is written.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedloom.errors import ConfigError, NotFoundError, StoreError
from fedloom.store.base import MAX_ROUND_INDEX, TASK_RUN_STATUSES


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
    try:
        _check_jsonable(plain, what, set())
    except RecursionError as exc:
        raise ConfigError(f"{what} is nested too deeply to store as JSON") from exc
    return json.dumps(plain, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


def _check_jsonable(value: object, where: str, open_containers: set[int]) -> None:
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where} is {value}; JSON cannot hold NaN or infinity")
        return
    if isinstance(value, dict | list | tuple):
        if id(value) in open_containers:
            raise ConfigError(f"{where} contains itself; JSON cannot hold a cycle")
        open_containers.add(id(value))
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(key, str):
                    raise ConfigError(f"{where} has key {key!r}; JSON keys must be str")
                _check_jsonable(item, f"{where}[{key!r}]", open_containers)
        else:
            for position, item in enumerate(value):
                _check_jsonable(item, f"{where}[{position}]", open_containers)
        open_containers.discard(id(value))
        return
    raise ConfigError(
        f"{where} is a {type(value).__name__}, which JSON cannot hold; "
        "use str, int, float, bool, None, list or dict"
    )


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
