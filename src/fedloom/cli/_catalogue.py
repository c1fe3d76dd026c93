"""``fedloom list``: every name a task, a pod.toml or a simulation may use, plugins included.

Each kind is a closed registry (or, for statistics and datasource kinds, a fixed list)
that fedloom rebuilds things from by name; a plugin module adds to them when it is
imported, so ``--plugin my_models`` lists its names too.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass

from rich.table import Table
from rich.text import Text

from fedloom.errors import ConfigError


@dataclass(frozen=True)
class Kind:
    """One kind of name: where it is used, and how to list its entries."""

    name: str
    used_as: str
    entries: Callable[[], list[tuple[str, str]]]


def _registry(home: str, attribute: str) -> Callable[[], list[tuple[str, str]]]:
    def entries() -> list[tuple[str, str]]:
        import importlib

        registry = getattr(importlib.import_module(home), attribute)
        return [(name, _summary(entry)) for name, entry in registry.items()]

    return entries


def _fixed(home: str, attribute: str, what: str) -> Callable[[], list[tuple[str, str]]]:
    def entries() -> list[tuple[str, str]]:
        import importlib

        return [(name, what) for name in getattr(importlib.import_module(home), attribute)]

    return entries


KINDS = (
    Kind("protocols", "[task] protocol", _registry("fedloom.protocols", "PROTOCOLS")),
    Kind("models", "[task.config.model] name", _registry("fedloom.algorithms.ml", "MODELS")),
    Kind(
        "strategies",
        "fedavg's [task.config.strategy] name",
        _registry("fedloom.strategies", "STRATEGIES"),
    ),
    Kind(
        "privacy",
        "fedavg's [[task.config.privacy]] name",
        _registry("fedloom.privacy", "TRANSFORMS"),
    ),
    Kind(
        "algorithms",
        "results_only's algorithm",
        _registry("fedloom.protocols._results_only", "RESULT_ALGORITHMS"),
    ),
    Kind(
        "statistics",
        "analytics' request.statistics",
        _fixed("fedloom.algorithms._analytics_request", "STATISTIC_NAMES", "a column statistic"),
    ),
    Kind(
        "datasources",
        "pod.toml [datasets.*] kind",
        _fixed("fedloom.datasources", "DATASOURCE_KINDS", "a kind of dataset"),
    ),
    Kind("loaders", "a folder dataset's loader", _registry("fedloom.datasources", "LOADERS")),
    Kind("hooks", "pod.toml hooks", _registry("fedloom._hooks", "HOOKS")),
    Kind("reducers", "inference's reduce", _registry("fedloom.protocols._inference", "REDUCERS")),
    Kind(
        "image-outputs",
        "inference's output_images",
        _registry("fedloom.algorithms.inference", "IMAGE_OUTPUTS"),
    ),
    Kind(
        "client-data",
        "a simulation's [data] name",
        _registry("fedloom.simulation._data", "CLIENT_DATA"),
    ),
)


def catalogue(only: str | None = None) -> dict[str, list[dict[str, str]]]:
    """``{kind: [{"name", "summary"}, ...]}`` for every kind, or for ``only``.

    Raises:
        ConfigError: ``only`` is not one of the kinds.
    """
    kinds = [kind for kind in KINDS if only is None or kind.name == only]
    if not kinds:
        raise ConfigError(
            f"unknown kind {only!r}; choose one of {', '.join(kind.name for kind in KINDS)}"
        )
    return {
        kind.name: [{"name": name, "summary": summary} for name, summary in kind.entries()]
        for kind in kinds
    }


def catalogue_table(listing: dict[str, list[dict[str, str]]]) -> Table:
    """One table: kind (and where it is used), name, what it is."""
    used_as = {kind.name: kind.used_as for kind in KINDS}
    table = Table(title="registered names (fedloom list KIND for one kind)")
    for heading in ("kind", "name", "what it is"):
        table.add_column(heading)
    for kind, entries in listing.items():
        for index, entry in enumerate(entries):
            label = Text(f"{kind}\n({used_as[kind]})") if index == 0 else Text("")
            table.add_row(label, Text(entry["name"]), Text(entry["summary"]))
        table.add_section()
    return table


_SEE_MODULE = "; see the module docstring"
_MAX_SUMMARY = 110


def _summary(entry: object) -> str:
    """A one-line summary of ``entry``: the first paragraph of its docstring.

    Or of its module's docstring when it says "see the module docstring"; without reST
    quotes, cut at a sentence or a length.
    """
    text = _first_paragraph(inspect.getdoc(entry))
    if _SEE_MODULE in text:
        module = inspect.getmodule(entry)
        text = _first_paragraph(module.__doc__ if module else None) or text.split(_SEE_MODULE)[0]
    text = text.replace("``", "").replace(":class:", "").replace(":func:", "")
    sentence = re.split(r"\.\s+(?=[A-Z])", text)[0].rstrip(".")
    if len(sentence) <= _MAX_SUMMARY:
        return sentence
    return sentence[: _MAX_SUMMARY - 1].rsplit(" ", 1)[0] + "…"


def _first_paragraph(doc: str | None) -> str:
    lines = []
    for line in (doc or "").strip().splitlines():
        if not line.strip():
            break
        lines.append(line.strip())
    return " ".join(lines)
