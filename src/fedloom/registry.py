"""Closed registries: things that can be rebuilt from a name plus JSON config.

A registry maps short names (``"fedavg"``, ``"mlp"``) to factories that fedloom itself or
the user registered *in this process*. Looking a name up never imports anything: a dotted
path such as ``os.system`` or ``builtins.eval`` is not a module reference here, only an
unknown name, and is refused before any lookup happens.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from fedloom.errors import ConfigError, DuplicateNameError, UnknownNameError

T = TypeVar("T")

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


def check_name(kind: str, name: object) -> str:
    """Return ``name`` if it is a well-formed registry name, else raise UnknownNameError."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise UnknownNameError(
            f"{kind} name {name!r} is not a registered name: names are lower-case words "
            "([a-z][a-z0-9_-]*), never dotted import paths"
        )
    return name


class Registry(Generic[T]):
    """A closed name → entry mapping; see the module docstring."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its argument under ``name``.

        Raises:
            UnknownNameError: ``name`` is not a well-formed registry name.
            DuplicateNameError: ``name`` is already registered.
        """
        check_name(self.kind, name)

        def decorator(entry: T) -> T:
            self.add(name, entry)
            return entry

        return decorator

    def add(self, name: str, entry: T) -> None:
        check_name(self.kind, name)
        if name in self._entries:
            raise DuplicateNameError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry

    def get(self, name: object) -> T:
        """The entry registered under ``name``.

        Raises:
            UnknownNameError: malformed or unregistered name; nothing is imported.
        """
        checked = check_name(self.kind, name)
        try:
            return self._entries[checked]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "none"
            raise UnknownNameError(
                f"unknown {self.kind} {checked!r}; registered: {known}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """``(name, entry)`` pairs, sorted by name."""
        return sorted(self._entries.items(), key=lambda item: item[0])

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def import_plugins(modules: tuple[str, ...], *, where: str = "plugins") -> None:
    """Import the plugin modules the pod's admin approved (they register names).

    ``where`` says where the modules were listed (``"pod.toml: plugins"``); every error
    message starts with it.

    Raises:
        ConfigError: a name is not a dotted module name, a module (or one it imports)
            cannot be found, or importing it raised; the message names the module, and
            the original error is the ``__cause__``.
    """
    for module in modules:
        if not module or not all(part.isidentifier() for part in module.split(".")):
            raise ConfigError(f"{where}: plugin {module!r} is not a module name")
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            if missing == module or module.startswith(missing + "."):
                problem = "no such module (is it installed, or on PYTHONPATH?)"
            else:
                problem = f"it imports a module that is missing: {exc}"
            raise ConfigError(
                f"{where}: cannot import plugin module {module!r}: {problem}"
            ) from exc
        except Exception as exc:  # the plugin's own code failed: still the admin's to fix
            detail = " ".join(str(exc).split()) or "no message"
            raise ConfigError(
                f"{where}: plugin module {module!r} failed to import: "
                f"{type(exc).__name__}: {detail}"
            ) from exc
