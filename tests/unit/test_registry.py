"""The closed registries: names only, never imports."""

from __future__ import annotations

import sys

import pytest

from fedloom._registry import Registry
from fedloom.errors import ConfigError, DuplicateNameError, UnknownNameError
from fedloom.protocols import PROTOCOLS, FedAvg, load_protocol

DANGEROUS = [
    "os.system",
    "builtins.eval",
    "subprocess.Popen",
    "fedloom.protocols._fedavg.FedAvg",
    "__import__",
    "../etc/passwd",
    "FedAvg",
    "",
    None,
    42,
    ["fedavg"],
]


@pytest.mark.parametrize("name", DANGEROUS)
def test_a_malformed_or_dangerous_name_is_refused_without_importing(name: object) -> None:
    before = set(sys.modules)
    with pytest.raises(UnknownNameError):
        load_protocol({"protocol": name, "config": {}})
    assert set(sys.modules) == before, "looking a name up must import nothing"


def test_an_unknown_well_formed_name_lists_the_registered_ones() -> None:
    with pytest.raises(UnknownNameError, match=r"registered: .*fedavg"):
        load_protocol({"protocol": "no_such_protocol", "config": {}})


def test_spec_shape_is_checked() -> None:
    for spec in ({"protocol": "fedavg"}, {"protocol": "fedavg", "config": {}, "x": 1}, "fedavg"):
        with pytest.raises(ConfigError):
            load_protocol(spec)
    with pytest.raises(ConfigError, match="must be a map"):
        load_protocol({"protocol": "fedavg", "config": [1, 2]})


def test_registry_refuses_duplicates_and_bad_names() -> None:
    registry: Registry[int] = Registry("thing")
    registry.add("one", 1)
    with pytest.raises(DuplicateNameError):
        registry.add("one", 2)
    with pytest.raises(UnknownNameError):
        registry.add("os.path", 3)
    assert registry.get("one") == 1 and "one" in registry and registry.names() == ["one"]


def test_builtin_protocols_are_registered() -> None:
    assert {"fedavg", "analytics", "results_only"} <= set(PROTOCOLS.names())
    assert PROTOCOLS.get("fedavg") is FedAvg
