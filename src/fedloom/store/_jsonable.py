"""Strict JSON checks shared by the store records and :func:`fedloom.store.task_hash`.

Kept apart from :mod:`fedloom.store._validation` because :mod:`fedloom.store._base` needs it
and validation imports base.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from fedloom.errors import ConfigError


def check_jsonable(value: object, where: str) -> None:
    """ConfigError naming the first part of ``value`` that JSON cannot hold exactly.

    Only str keys, finite floats, and dict/list/tuple containers are accepted, so that what
    is read back equals what was written (a tuple reads back as a list).
    """
    try:
        _check(value, where, set())
    except RecursionError as exc:
        raise ConfigError(f"{where} is nested too deeply to store as JSON") from exc


def canonical_json(value: Mapping[str, object], what: str) -> str:
    """The canonical JSON text of a mapping: sorted keys, no spaces, no NaN.

    Raises:
        ConfigError: ``value`` is not a mapping or holds something JSON cannot hold, or a
            str in it is not valid Unicode (a lone surrogate); the message names the key.
    """
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a mapping, got {type(value).__name__}")
    plain = dict(value)
    check_jsonable(plain, what)
    text = json.dumps(
        plain, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ConfigError(f"{what} holds text that is not valid Unicode: {exc.reason}") from exc
    return text


def _check(value: object, where: str, open_containers: set[int]) -> None:
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
                _check(item, f"{where}[{key!r}]", open_containers)
        else:
            for position, item in enumerate(value):
                _check(item, f"{where}[{position}]", open_containers)
        open_containers.discard(id(value))
        return
    raise ConfigError(
        f"{where} is a {type(value).__name__}, which JSON cannot hold; "
        "use str, int, float, bool, None, list or dict"
    )
