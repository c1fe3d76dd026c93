"""Closed registries: things that can be rebuilt from a name plus JSON config.

A registry maps short names (``"fedavg"``, ``"mlp"``) to factories that fedloom itself or
the user registered *in this process*. Looking a name up never imports anything: a dotted
path such as ``os.system`` or ``builtins.eval`` is not a module reference here, only an
unknown name, and is refused before any lookup happens.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Generic, Protocol, TypeVar

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
        """Register ``entry`` under ``name``.

        Raises:
            UnknownNameError: ``name`` is not a well-formed registry name.
            DuplicateNameError: ``name`` is already registered.
        """
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
        """The registered names, sorted."""
        return sorted(self._entries)

    def items(self) -> list[tuple[str, T]]:
        """``(name, entry)`` pairs, sorted by name."""
        return sorted(self._entries.items(), key=lambda item: item[0])

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


class NamedArgs(Protocol):
    """A frozen dataclass whose fields are its JSON args and whose ``name`` registers it."""

    name: ClassVar[str]


N = TypeVar("N", bound=NamedArgs)
C = TypeVar("C", bound=type[Any])


class ArgsRegistry(Generic[N]):
    """A closed registry of frozen dataclasses built from a name plus JSON args.

    Strategies and privacy transforms are looked up by name and rebuilt on each side from
    their args (the dataclass's fields): nothing is unpickled, and an unknown name or arg
    is a one-line :class:`~fedloom.errors.ConfigError` that names what is known.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type[N]] = {}

    def register(self, cls: C) -> C:
        """Class decorator: register ``cls`` under its ``name`` (again: a no-op).

        Raises:
            ConfigError: the name is taken by another class.
        """
        known = self._classes.get(cls.name)
        if known is not None and known is not cls:
            raise ConfigError(
                f"{self.kind} {cls.name!r} is registered already ({known.__qualname__})"
            )
        self._classes[cls.name] = cls
        return cls

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._classes)

    def read_spec(self, config: object) -> tuple[str, dict[str, Any]]:
        """``(name, args)`` of ``"name"`` or ``{"name": ..., "args": {...}}``, built once to check.

        That is how a task file or a simulation file names a strategy or a transform.

        Raises:
            ConfigError: another shape, or a name or args :meth:`build` refuses.
        """
        if isinstance(config, str):
            config = {"name": config}
        if (
            not isinstance(config, Mapping)
            or set(config) - {"name", "args"}
            or "name" not in config
        ):
            raise ConfigError(
                f'{self.kind} must be a name or {{"name": ..., "args": {{...}}}}, got {config!r}'
            )
        args = config.get("args") or {}
        self.build(config["name"], args)
        return config["name"], dict(args)

    def items(self) -> list[tuple[str, type[N]]]:
        """``(name, class)`` pairs, sorted by name."""
        return sorted(self._classes.items(), key=lambda item: item[0])

    def build(self, name: object, args: object = None) -> N:
        """The instance of the class registered as ``name``, built from JSON ``args``.

        Raises:
            ConfigError: an unknown name, args that are not a mapping, an unknown or
                missing arg, or a value the class refuses (the message names it).
        """
        cls = self._classes.get(name) if isinstance(name, str) else None
        if cls is None:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        args = {} if args is None else args
        if not isinstance(args, Mapping):
            raise ConfigError(f"{self.kind} {name!r} args must be a mapping, got {args!r}")
        fields = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(args) - fields)
        if unknown:
            raise ConfigError(
                f"{self.kind} {name!r} has no args {unknown}; it takes {sorted(fields) or 'none'}"
            )
        try:
            return cls(**args)
        except TypeError as exc:  # a missing arg
            raise ConfigError(f"{self.kind} {name!r}: {exc}") from exc


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
