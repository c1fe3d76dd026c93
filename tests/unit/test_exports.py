"""The public API is tiered: ``fedloom`` for researchers, then ``fedloom.errors``,
``fedloom.pod``, ``fedloom.hub``, ``fedloom.plugins`` and ``fedloom.testing``; each
``__all__`` is sorted, resolvable, documented and derived from one list; everything else
is a private module."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path
from types import ModuleType

import pytest

import fedloom
from fedloom._registry import ArgsRegistry, Registry

TIERS = ["fedloom", "fedloom.errors", "fedloom.pod", "fedloom.hub", "fedloom.plugins"]
PUBLIC_MODULES = {*TIERS, "fedloom.testing", "fedloom.__main__"}
SRC = Path(fedloom.__file__).parent


def _tier(name: str) -> ModuleType:
    return importlib.import_module(name)


@pytest.mark.parametrize("name", [*TIERS, "fedloom.testing"])
def test_all_is_sorted_unique_and_resolves(name: str) -> None:
    module = _tier(name)
    names = list(module.__all__)
    assert names == sorted(names), f"keep {name}.__all__ sorted"
    assert len(names) == len(set(names))
    assert [n for n in names if not hasattr(module, n)] == []
    assert [n for n in names if n.startswith("_")] == []


@pytest.mark.parametrize("name", [*TIERS, "fedloom.testing"])
def test_exported_classes_and_functions_are_documented(name: str) -> None:
    module = _tier(name)
    undocumented = [
        n
        for n in module.__all__
        if (inspect.isclass(getattr(module, n)) or inspect.isfunction(getattr(module, n)))
        and not (getattr(module, n).__doc__ or "").strip()
    ]
    assert not undocumented


def test_the_researchers_tier_is_small_and_listed_once_in_its_stub() -> None:
    """``fedloom.__all__`` comes from ``__init__.pyi`` alone (lazy_loader reads it)."""
    stub = ast.parse((SRC / "__init__.pyi").read_text())
    listed = sorted(
        alias.asname or alias.name
        for node in stub.body
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    )
    assert listed == sorted(fedloom.__all__)
    assert len(fedloom.__all__) <= 40, "the researcher's tier is about 30 names"
    init = (SRC / "__init__.py").read_text()
    assert not any(name in init for name in fedloom.__all__), "names live in the stub only"


def test_no_public_name_is_left_unexported() -> None:
    for name in TIERS[1:]:
        module = _tier(name)
        public = {
            n
            for n, value in vars(module).items()
            if not n.startswith("_") and not isinstance(value, ModuleType) and n != "annotations"
        }
        assert public - set(module.__all__) == set(), name


def test_fedloom_protocol_no_longer_shadows_typing_protocol() -> None:
    assert "Protocol" not in fedloom.__all__
    assert "TaskProtocol" in fedloom.__all__


def _all_modules() -> list[str]:
    return [
        info.name
        for info in pkgutil.walk_packages([str(SRC)], prefix="fedloom.")
        if not info.name.startswith("fedloom.testing.") and info.name != "fedloom.__main__"
    ]


def test_every_internal_module_is_private() -> None:
    """A module path is public only for a tier; the rest is ``_name`` or a package."""
    public_looking = []
    for name in _all_modules():
        leaf = name.rsplit(".", 1)[1]
        is_package = (SRC.joinpath(*name.split(".")[1:]) / "__init__.py").exists()
        if not leaf.startswith("_") and not is_package and name not in PUBLIC_MODULES:
            public_looking.append(name)
    assert public_looking == []


def test_every_registry_is_in_the_plugin_tier() -> None:
    import fedloom.plugins

    registries = {
        id(value)
        for name in _all_modules()
        for value in vars(importlib.import_module(name)).values()
        if isinstance(value, Registry | ArgsRegistry)
    }
    exported = {
        id(getattr(fedloom.plugins, n))
        for n in fedloom.plugins.__all__
        if isinstance(getattr(fedloom.plugins, n), Registry | ArgsRegistry)
    }
    assert registries and registries <= exported
    registers = {n for n in fedloom.plugins.__all__ if n.startswith("register_")}
    assert {"register_protocol", "register_strategy", "register_transform"} <= registers
    assert "register_hook" in registers


def test_results_are_generic_over_the_protocols_result_type() -> None:
    import typing

    from fedloom.protocols import PodResults

    expected = {
        fedloom.FedAvg: fedloom.FedAvgResult,
        fedloom.Analytics: fedloom.AnalyticsResult,
        fedloom.ResultsOnly: dict[str, PodResults],
        fedloom.FileStatistics: fedloom.FileStatisticsResult,
    }
    for protocol, result in expected.items():
        bases = [
            base
            for klass in protocol.__mro__
            for base in getattr(klass, "__orig_bases__", ())
            if typing.get_origin(base) is fedloom.TaskProtocol
        ]
        assert bases, protocol
        resolved = typing.get_args(bases[0])[0]
        if isinstance(resolved, typing.TypeVar):  # BatchedProtocol passes its ResultT on
            parametrised = next(
                b for b in protocol.__orig_bases__ if typing.get_origin(b) is not None
            )
            resolved = typing.get_args(parametrised)[-1]
        assert resolved == result, protocol
    assert fedloom.TaskResult[fedloom.FedAvgResult].__args__ == (fedloom.FedAvgResult,)


@pytest.mark.parametrize("name", [*TIERS, "fedloom.testing"])
def test_public_methods_of_exported_classes_are_documented(name: str) -> None:
    """Docstring lint sees only public modules; the API's classes live in private ones."""
    import fedloom.plugins as plugins
    from fedloom.hub import GrpcMailbox, MemoryHub
    from fedloom.pod import MemoryPodStore, SqlitePodStore

    # implementations of a structural contract take the contract's documentation
    contract_of: dict[type, type] = {
        plugins.MemoryExperimentStore: plugins.ExperimentStore,
        fedloom.SqliteExperimentStore: plugins.ExperimentStore,
        MemoryPodStore: plugins.PodStore,
        SqlitePodStore: plugins.PodStore,
        plugins.ProcessPoolBackend: plugins.Backend,
        plugins.ThreadPoolBackend: plugins.Backend,
        GrpcMailbox: plugins.Mailbox,
        MemoryHub: plugins.Hub,
    }
    module = _tier(name)
    undocumented = []
    for export in module.__all__:
        cls = getattr(module, export)
        if not inspect.isclass(cls) or not cls.__module__.startswith("fedloom"):
            continue
        for attribute, value in vars(cls).items():
            if attribute.startswith("_") or not (
                inspect.isfunction(value) or isinstance(value, property | classmethod)
            ):
                continue
            documented = inspect.getdoc(getattr(cls, attribute)) or inspect.getdoc(
                getattr(contract_of.get(cls, object), attribute, None)
            )
            if not (documented or "").strip():
                undocumented.append(f"{export}.{attribute}")
    assert undocumented == []
