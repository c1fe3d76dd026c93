"""The strict TOML reader every fedloom config file goes through.

A pod's ``pod.toml``, a modeller's task file and a simulation file are all read here:
:func:`read_toml` turns a missing, unreadable, oversized, non-UTF-8 or malformed file into
a one-line :class:`~fedloom.errors.ConfigError` (a syntax error gives its line and
column), and :class:`TomlTable` reads the parsed tables strictly: an unknown key, a value
of the wrong type or out of range raises a ConfigError whose message names the file and
the dotted key (``/etc/fedloom/pod.toml: policy.min_rows: ...``).
"""

from __future__ import annotations

import datetime
import json
import math
import re
import tomllib
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from fedloom._registry import NAME_PATTERN
from fedloom.errors import ConfigError

__all__ = ["MAX_CONFIG_FILE_BYTES", "TomlTable", "parse_toml", "read_toml"]

MAX_CONFIG_FILE_BYTES = 1024 * 1024
"""Config files above this size are refused rather than parsed."""

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_TOML_TIME_TYPES = (datetime.date, datetime.time, datetime.datetime)


def read_toml(path: str | Path, *, kind: str = "config file") -> TomlTable:
    """Read and parse a TOML config file; its top-level table.

    ``kind`` names the file in the messages (``"simulation file"``); the table's
    :attr:`TomlTable.file` is the resolved path, against which relative paths resolve.

    Raises:
        ConfigError: the file does not exist, cannot be read, is larger than
            :data:`MAX_CONFIG_FILE_BYTES`, is not UTF-8, or is not valid TOML (the message
            gives the line and column).
    """
    if "\x00" in str(path):
        raise ConfigError(f"{kind} name {str(path)!r} holds a NUL character")
    file = Path(path).expanduser().resolve()
    try:
        with file.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"cannot read {kind} {file}: it does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {kind} {file}: {exc.strerror or exc}") from exc
    if len(raw) > MAX_CONFIG_FILE_BYTES:
        raise ConfigError(f"{file}: larger than {MAX_CONFIG_FILE_BYTES} bytes; is it a {kind}?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: not UTF-8 text (byte {exc.start})") from None
    return parse_toml(text, file)


def parse_toml(text: str, file: Path) -> TomlTable:
    """Parse TOML ``text`` as if read from ``file`` (which names it in errors).

    Raises:
        ConfigError: ``text`` is not valid TOML; the message gives the line and column.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    return TomlTable(data, file)


class TomlTable:
    """One table of a parsed config file, read strictly.

    Every getter raises :class:`~fedloom.errors.ConfigError` whose message starts with
    the file and the dotted key (``pod.toml: policy.min_rows: ...``). Relative paths are
    resolved against the folder of the file.
    """

    def __init__(self, data: Mapping[str, Any], file: Path, prefix: str = "") -> None:
        self.data = data
        self.file = file
        self.prefix = prefix

    @property
    def folder(self) -> Path:
        """The folder relative paths in this file are resolved against."""
        return self.file.parent

    def key(self, name: str) -> str:
        """The dotted key of ``name`` in this table, as TOML would write it."""
        part = name if _BARE_KEY.fullmatch(name) else json.dumps(name)
        return f"{self.prefix}.{part}" if self.prefix else part

    def error(self, name: str, problem: str) -> ConfigError:
        """A ConfigError naming the file and the key ``name`` of this table."""
        return ConfigError(f"{self.file}: {self.key(name)}: {problem}")

    def check_keys(self, allowed: Collection[str], hints: Mapping[str, str] | None = None) -> None:
        """Refuse keys not in ``allowed``; ``hints`` may say where such a key belongs.

        Raises:
            ConfigError: naming the first unknown key and the allowed ones.
        """
        unknown = sorted(str(key) for key in self.data if key not in allowed)
        if unknown:
            first = unknown[0]
            hint = (hints or {}).get(first)
            listed = ", ".join(sorted(allowed)) or "none"
            more = f" (also unknown: {', '.join(unknown[1:])})" if len(unknown) > 1 else ""
            raise self.error(first, f"unknown key{more}; {hint or f'allowed here: {listed}'}")

    def has(self, name: str) -> bool:
        """Whether this table holds key ``name``."""
        return name in self.data

    def raw(self, name: str, example: str) -> Any:
        """The value of a required key, of any type."""
        if name not in self.data:
            raise ConfigError(f"{self.file}: {self.key(name)} is missing; add e.g. {example}")
        return self.data[name]

    def string(self, name: str, example: str) -> str:
        """A required non-empty string."""
        value = self.raw(name, example)
        if not isinstance(value, str) or not value:
            raise self.error(name, f"must be a non-empty string, e.g. {example}; got {value!r}")
        return value

    def optional_string(self, name: str, *, max_length: int = 200) -> str | None:
        """An optional non-empty string of at most ``max_length`` characters."""
        if name not in self.data:
            return None
        value = self.data[name]
        if not isinstance(value, str) or not value or len(value) > max_length:
            raise self.error(name, f"must be a non-empty string of at most {max_length} characters")
        return value

    def name(self, name: str, example: str, *, default: str | None = None) -> str:
        """A lower-case name as :data:`fedloom._registry.NAME_PATTERN` allows."""
        if default is not None and name not in self.data:
            return default
        value = self.raw(name, example)
        return self.check_name(name, value)

    def name_list(self, name: str, example: str, *, required: bool = True) -> tuple[str, ...]:
        """A non-empty list of distinct names; ``()`` when optional and absent."""
        if not required and name not in self.data:
            return ()
        value = self.raw(name, example)
        if not isinstance(value, list) or not value:
            raise self.error(name, f"must be a non-empty list of names, e.g. {example}")
        names = tuple(self.check_name(name, item) for item in value)
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise self.error(name, f"lists {', '.join(repeated)} more than once")
        return names

    def module_list(self, name: str) -> tuple[str, ...]:
        """An optional list of dotted module names (plugins) or registered names (hooks)."""
        if name not in self.data:
            return ()
        value = self.raw(name, f'{name} = ["..."]')
        if not isinstance(value, list) or not all(_is_module_name(item) for item in value):
            raise self.error(name, "must be a list of names")
        return tuple(value)

    def integer(self, name: str, default: int, *, minimum: int = 1) -> int:
        """An optional integer >= ``minimum``."""
        value = self.data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(name, f"must be an integer >= {minimum}, got {value!r}")
        return value

    def seconds(self, name: str, default: float) -> float:
        """An optional finite number of seconds > 0."""
        value = self.data.get(name, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise self.error(name, f"must be a number of seconds > 0, got {value!r}")
        return float(value)

    def boolean(self, name: str, default: bool) -> bool:
        """An optional ``true`` or ``false``."""
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, got {value!r}")
        return value

    def path(self, name: str, example: str) -> Path:
        """A required path; relative paths are relative to the file's folder."""
        return self.resolve(name, self.raw(name, example))

    def optional_path(self, name: str) -> Path | None:
        """An optional path, resolved as :meth:`path` resolves it."""
        return self.resolve(name, self.data[name]) if name in self.data else None

    def resolve(self, name: str, value: object) -> Path:
        """``value`` (the value of key ``name``) as an absolute path; nothing is opened."""
        if not isinstance(value, str) or not value or "\x00" in value:
            raise self.error(name, f"must be a non-empty path string, got {value!r}")
        return (self.folder / Path(value).expanduser()).resolve()

    def table(self, name: str) -> TomlTable | None:
        """The sub-table ``[name]``, or None when absent."""
        if name not in self.data:
            return None
        value = self.data[name]
        if not isinstance(value, dict):
            raise self.error(name, f"must be a table ([{self.key(name)}]), got {value!r}")
        return TomlTable(value, self.file, self.key(name))

    def tables(self) -> dict[str, TomlTable]:
        """This table as a map of name -> sub-table (``[datasets.default]``, ...)."""
        found: dict[str, TomlTable] = {}
        for key in self.data:
            self.check_name(key, key)
            table = self.table(key)
            if table is not None:
                found[key] = table
        return found

    def path_table(self, name: str) -> dict[str, Path]:
        """An optional ``[name]`` table of entity name -> path (e.g. pinned public keys)."""
        table = self.table(name)
        if table is None:
            return {}
        return {
            table.check_name(key, key): table.resolve(key, value)
            for key, value in table.data.items()
        }

    def plain(self) -> dict[str, Any]:
        """A copy of this table, refusing TOML dates and times (JSON cannot hold them)."""
        return {key: self._plain(self.key(key), value) for key, value in self.data.items()}

    def _plain(self, key: str, value: Any) -> Any:
        if isinstance(value, _TOML_TIME_TYPES):
            raise ConfigError(
                f"{self.file}: {key}: a TOML date/time is not allowed here; quote it as a string"
            )
        if isinstance(value, dict):
            return {k: self._plain(f"{key}.{k}", v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._plain(f"{key}[{i}]", v) for i, v in enumerate(value)]
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{self.file}: {key}: must be a finite number, got {value!r}")
        return value

    def check_name(self, name: str, value: object) -> str:
        """``value`` (of key ``name``) if it is a lower-case name, as entities are named."""
        if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
            raise self.error(
                name,
                f"{value!r} is not a valid name: use a lower-case word "
                "([a-z][a-z0-9_-]*, at most 64 characters)",
            )
        return value


def _is_module_name(item: object) -> bool:
    return (
        isinstance(item, str)
        and bool(item)
        and all(part.replace("-", "_").isidentifier() for part in item.split("."))
    )
