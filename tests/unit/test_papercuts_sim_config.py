"""Every mistake in a simulation TOML names its section and key (``[training] epochs ...``)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from fedloom.errors import ConfigError
from fedloom.privacy import TransformSpec
from fedloom.simulation._config import load_simulation_file, simulation_from_mapping
from fedloom.strategies import StrategySpec

GOOD = """
[simulation]
rounds = 2
backend = "thread"
num_parallels = 1
[model]
name = "mlp"
config = { in_features = 6, hidden = [5], out_features = 3 }
[data]
name = "synthetic"
clients = 4
samples = 8
shape = [6]
classes = 3
[training]
batch_size = 4
[sampling]
kind = "random"
fraction = 0.5
[resources]
memory = "300 MB"
[clients.2]
learning_rate = 0.5
"""


def _with(section: str, table: dict[str, Any]) -> dict[str, Any]:
    """GOOD with ``table`` merged into ``[section]`` (the keys it gives replace GOOD's)."""
    raw = tomllib.loads(GOOD)
    raw[section] = {**raw.get(section, {}), **table}
    return raw


def _replaced(section: str, table: object) -> dict[str, Any]:
    return tomllib.loads(GOOD) | {section: table}


MODEL = {"name": "mlp", "config": {"in_features": 6, "hidden": [5], "out_features": 3}}
DATA = {"name": "synthetic", "clients": 4, "samples": 8, "shape": [6]}

CASES = [
    # [simulation]
    (_with("simulation", {"rounds": "x"}), r"\[simulation\] rounds must be an int >= 1, got 'x'"),
    (_with("simulation", {"rounds": 0}), r"\[simulation\] rounds must be an int >= 1, got 0"),
    (_with("simulation", {"seed": -1}), r"\[simulation\] seed must be an int >= 0, got -1"),
    (_with("simulation", {"num_parallels": 1.5}), r"\[simulation\] num_parallels must be an int"),
    (_with("simulation", {"backend": 3}), r"\[simulation\] backend must be a string, got 3"),
    (_with("simulation", {"backend": "mpi"}), r"\[simulation\] backend: unknown .*'mpi'"),
    (_with("simulation", {"device": "tpu"}), r"\[simulation\] device must be 'cpu' or 'cuda"),
    (_with("simulation", {"validation_fraction": 2}), r"\[simulation\] validation_fraction .*"),
    (_with("simulation", {"round_timeout": "5"}), r"\[simulation\] round_timeout must be a"),
    (_with("simulation", {"start_method": "x"}), r"\[simulation\] start_method must be one of"),
    (_with("simulation", {"plugins": "mod"}), r"\[simulation\] plugins must be a list"),
    (_with("simulation", {"plugins": ["no_such_plugin_x"]}), r"\[simulation\] plugins: .*no_such"),
    (_with("simulation", {"speed": 1}), r"unknown keys in \[simulation\]: \['speed'\]"),
    (_replaced("simulation", 5), r"\[simulation\] must be a table"),
    # [model]
    (_replaced("model", {"config": MODEL["config"]}), r"\[model\] name is missing"),
    (_replaced("model", {"name": 3}), r"\[model\] name must be a string .*got 3"),
    (_replaced("model", {"name": "mlpp"}), r"\[model\] name: unknown model 'mlpp'"),
    (_replaced("model", {"name": "mlp", "config": 3}), r"\[model\] config must be a mapping"),
    (
        _replaced("model", {"name": "mlp", "config": {**MODEL["config"], "in_features": "x"}}),
        r"\[model\] mlp config 'in_features' must be an int, got 'x'",
    ),
    (_replaced("model", {**MODEL, "layers": 2}), r"unknown keys in \[model\]: \['layers'\]"),
    # [data]
    (_replaced("data", {"clients": 4}), r"\[data\] name is missing"),
    (_replaced("data", {**DATA, "name": "synth"}), r"\[data\] name: unknown client data 'synth'"),
    (_replaced("data", {**DATA, "clients": "x"}), r"\[data\] synthetic client data: 'clients'"),
    (_replaced("data", {**DATA, "clients": 0}), r"\[data\] .*'clients' must be an int >= 1"),
    (_replaced("data", {**DATA, "colour": 1}), r"\[data\] .*unknown keys \['colour'\]"),
    # [training]
    (_with("training", {"epochs": "x"}), r"\[training\] epochs must be an int, got 'x'"),
    (_with("training", {"epochs": 0}), r"\[training\] epochs must be > 0, got 0"),
    (_with("training", {"learning_rate": "x"}), r"\[training\] learning_rate must be a number"),
    (_with("training", {"momentum": 1.5}), r"\[training\] momentum must be < 1"),
    (_with("training", {"optimizer": "rmsprop"}), r"\[training\] optimizer must be one of"),
    (_with("training", {"epoch": 1}), r"unknown keys in \[training\]: \['epoch'\]"),
    # [sampling]
    (_with("sampling", {"kind": "lottery"}), r"\[sampling\] kind must be one of .*'lottery'"),
    (_with("sampling", {"fraction": "x"}), r"\[sampling\] fraction must be a number, got 'x'"),
    (_with("sampling", {"fraction": 2}), r"\[sampling\] fraction must be in \(0, 1\], got 2"),
    (_with("sampling", {"per_round": 0}), r"\[sampling\] per_round must be an int >= 1"),
    (_replaced("sampling", {"kind": "sequential"}), r"\[sampling\] kind: .*needs per_round"),
    (_with("sampling", {"kinds": "all"}), r"unknown keys in \[sampling\]: \['kinds'\]"),
    # [resources]
    (_with("resources", {"memory": "12 parsecs"}), r"\[resources\] memory: '12 parsecs' is not"),
    (_with("resources", {"gpu_memory": [1]}), r"\[resources\] gpu_memory: \[1\] is not a"),
    (_with("resources", {"cpus": "x"}), r"\[resources\] cpus must be a finite number"),
    (_with("resources", {"budget_memory": "lots"}), r"\[resources\] budget_memory: 'lots'"),
    (_with("resources", {"budget_cpus": 0}), r"\[resources\] budget_cpus: .*> 0, got 0"),
    (_with("resources", {"budget_device_memory": 3}), r"\[resources\] budget_device_memory mu"),
    (
        _with("resources", {"budget_device_memory": {"gpu": "1 GB"}}),
        r"\[resources\] budget_device_memory: budget device 'gpu' is not a GPU name",
    ),
    (_with("resources", {"max_retries": -1}), r"\[resources\] max_retries must be a whole"),
    (_with("resources", {"growth": 0.5}), r"\[resources\] growth must be a finite factor"),
    (_with("resources", {"mem": 1}), r"unknown keys in \[resources\]: \['mem'\]"),
    # [clients.N]
    (_replaced("clients", {"two": {}}), r"\[clients\.N\] sections need a client number, got 'two'"),
    (_replaced("clients", {"2": 3}), r"\[clients\.2\] must be a table"),
    (_replaced("clients", {"9": {"epochs": 2}}), r"\[clients\.9\] there is no client 9"),
    (_replaced("clients", {"2": {"epochs": "x"}}), r"\[clients\.2\] .*epochs must be an int"),
    (_replaced("clients", {"2": {"speed": 1}}), r"\[clients\.2\] .*unknown .*\['speed'\]"),
    # [strategy]
    (_replaced("strategy", {"name": "fedsgd"}), r"\[strategy\] unknown strategy 'fedsgd'"),
    (_replaced("strategy", 3), r"\[strategy\] strategy must be a name or"),
    (_replaced("strategy", {"name": "fedprox", "mu": 1}), r"\[strategy\] strategy must be a"),
    (
        _replaced("strategy", {"name": "fedprox", "args": {"mu": -1}}),
        r"\[strategy\] strategy 'fedprox': mu must be a number in \[0",
    ),
    (
        _replaced("strategy", {"name": "fedprox", "args": {"nu": 1}}),
        r"\[strategy\] strategy 'fedprox' has no args \['nu'\]",
    ),
    # [[privacy]]
    (_replaced("privacy", {"name": "clip"}), r"privacy must be a list of"),
    (_replaced("privacy", [{"name": "blur"}]), r"privacy\[0\]: unknown privacy transform 'blur'"),
    (
        _replaced("privacy", [{"name": "clip", "args": {"max_norm": 1}}, {"name": "clip"}]),
        r"privacy\[1\]: privacy transform 'clip': .*max_norm",
    ),
    (
        _replaced("privacy", [{"name": "clip", "args": {"max_norm": 0}}]),
        r"privacy\[0\]: privacy transform 'clip': max_norm must be a finite number > 0, got 0",
    ),
]


@pytest.mark.parametrize(("raw", "message"), CASES)
def test_a_mistake_names_its_section_and_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        simulation_from_mapping(raw, where="sim.toml")
    text = str(raised.value)
    assert re.match(rf"sim\.toml: (?:{message})", text), text
    assert "\n" not in text


def test_the_good_file_still_loads() -> None:
    config = simulation_from_mapping(tomllib.loads(GOOD)).config
    assert config.training.batch_size == 4
    assert config.client_overrides == {2: {"learning_rate": 0.5}}
    assert config.resources is not None and config.resources.estimate.memory == 300_000_000


def test_the_strategy_and_privacy_entries_are_read() -> None:
    text = (
        'strategy = { name = "fedprox", args = { mu = 0.5 } }\n'
        + GOOD
        + '[[privacy]]\nname = "clip"\nargs = { max_norm = 2.0 }\n'
    )
    config = simulation_from_mapping(tomllib.loads(text)).config
    assert config.strategy == StrategySpec("fedprox", {"mu": 0.5})
    assert config.privacy == (TransformSpec("clip", {"max_norm": 2.0}),)
    table = GOOD + '[strategy]\nname = "fedadam"\n'
    assert simulation_from_mapping(tomllib.loads(table)).config.strategy.name == "fedadam"
    assert simulation_from_mapping(tomllib.loads(GOOD)).config.privacy == ()


def test_a_file_names_itself_and_the_section(tmp_path: Path) -> None:
    path = tmp_path / "sim.toml"
    path.write_text(GOOD.replace("batch_size = 4", 'batch_size = 4\nepochs = "x"'))
    with pytest.raises(ConfigError, match=r"sim\.toml: \[training\] epochs must be an int"):
        load_simulation_file(path)
