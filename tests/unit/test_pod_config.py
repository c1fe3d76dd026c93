"""The pod's TOML config file: the schema, path resolution, and every kind of mistake."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedloom import ResultsOnly, run_local
from fedloom.errors import ConfigError, PodResponseError
from fedloom.pod import PodConfig, PodPolicy, load_pod_config
from fedloom.transport._hub_config import HubAddress, TlsClientConfig, parse_hub_address

VALID = """\
name = "pod-a"
hub = "127.0.0.1:7800"
identity = "keys/pod-a.key"
store = "pod-a.db"
max_concurrent_tasks = 2

[tls]
ca = "tls/ca.crt"
certificate = "tls/pod-a.crt"
key = "tls/pod-a.key"

[policy]
modellers = ["alice", "bob"]
protocols = ["fedavg", "analytics"]
min_rows = 12
start_timeout = 90.5

[modeller_keys]
alice = "keys/alice.pub.json"

[datasets.default]
kind = "table"
path = "data/a.csv"
label_column = "label"

[datasets.extra]
kind = "csv"
path = "/srv/data/extra.csv"
feature_columns = ["f0", "f1"]
"""

MINIMAL = """\
name = "pod-a"
hub = "localhost:7800"
identity = "keys/pod-a.key"
store = "pod-a.db"
insecure = true

[policy]
modellers = ["alice"]

[datasets.default]
kind = "table"
path = "data/a.csv"
label_column = "label"
"""


def write_config(folder: Path, text: str, name: str = "pod.toml") -> Path:
    (folder / "keys").mkdir(exist_ok=True)
    (folder / "keys" / "pod-a.key").write_text("{}")  # only its existence is checked
    path = folder / name
    path.write_text(text)
    return path


def write_csv(path: Path, rows: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(rows, 2)), columns=["f0", "f1"])
    frame["label"] = np.arange(rows) % 2
    frame.to_csv(path, index=False)


def test_a_full_config_is_read_with_paths_relative_to_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = (tmp_path / "etc").resolve()
    folder.mkdir()
    path = write_config(folder, VALID)
    monkeypatch.chdir(tmp_path)  # relative paths must not depend on the working directory

    config = load_pod_config(path)

    assert config.name == "pod-a"
    assert config.hub_address == HubAddress("127.0.0.1", 7800)
    assert config.identity_path == folder / "keys" / "pod-a.key"
    assert config.store_path == folder / "pod-a.db"
    assert config.max_concurrent_tasks == 2
    assert config.tls == TlsClientConfig(
        folder / "tls" / "ca.crt", folder / "tls" / "pod-a.crt", folder / "tls" / "pod-a.key"
    )
    assert config.tls.mutual
    assert config.insecure is False
    assert config.policy == PodPolicy(
        allowed_protocols=frozenset({"fedavg", "analytics"}),
        allowed_modellers=frozenset({"alice", "bob"}),
        min_rows=12,
        start_timeout=90.5,
        max_concurrent_tasks=2,
    )
    assert config.modeller_keys == {"alice": folder / "keys" / "alice.pub.json"}
    assert config.datasets == {
        "default": {
            "kind": "table",
            "path": str(folder / "data" / "a.csv"),
            "label_column": "label",
        },
        "extra": {"kind": "csv", "path": "/srv/data/extra.csv", "feature_columns": ["f0", "f1"]},
    }
    assert config.config_path == folder / "pod.toml"


def test_a_relative_config_path_and_parent_folders_resolve(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = (tmp_path / "pods" / "a").resolve()
    folder.mkdir(parents=True)
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "pod-a.key").write_text("{}")
    text = MINIMAL.replace('"keys/pod-a.key"', '"../../keys/pod-a.key"')
    (folder / "pod.toml").write_text(text)
    monkeypatch.chdir(tmp_path / "pods")
    config = load_pod_config("a/pod.toml")
    assert config.identity_path == (tmp_path / "keys" / "pod-a.key").resolve()
    assert config.store_path == folder / "pod-a.db"


def test_a_minimal_insecure_config_gets_the_defaults(tmp_path: Path) -> None:
    config = load_pod_config(write_config(tmp_path, MINIMAL))
    assert config.insecure is True and config.tls is None
    assert config.hub_address == HubAddress("localhost", 7800)
    assert config.policy == PodPolicy(allowed_modellers=frozenset({"alice"}))
    assert config.policy.allowed_protocols is None  # any registered protocol
    assert config.max_concurrent_tasks == 4
    assert config.modeller_keys == {}


def test_the_datasets_read_files_relative_to_the_config_and_serve_a_task(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = (tmp_path / "pod").resolve()
    folder.mkdir()
    write_csv(folder / "data" / "a.csv", rows=14)
    config = load_pod_config(write_config(folder, MINIMAL))
    monkeypatch.chdir(tmp_path)

    datasets = config.build_datasets()
    assert set(datasets) == {"default"}
    assert len(datasets["default"]) == 14
    assert list(datasets["default"].table().columns) == ["f0", "f1", "label"]

    # the config's policy is the one the pod enforces
    task = ResultsOnly("dataset_summary")
    run = run_local(task, {"pod-a": datasets}, policy=config.policy, modeller_name="alice")
    assert run.result["pod-a"].body["rows"] == 14
    with pytest.raises(PodResponseError, match="NO_ACCESS"):
        run_local(task, {"pod-a": datasets}, policy=config.policy, modeller_name="mallory")


def test_tls_and_insecure_exclude_each_other(tmp_path: Path) -> None:
    both = MINIMAL.replace("insecure = true", 'insecure = true\n[tls]\nca = "ca.crt"')
    with pytest.raises(ConfigError, match="insecure") as caught:
        load_pod_config(write_config(tmp_path, both))
    assert "remove one" in str(caught.value)

    neither = MINIMAL.replace("insecure = true", "")
    with pytest.raises(ConfigError, match=r"\[tls\]") as caught:
        load_pod_config(write_config(tmp_path, neither))
    assert "insecure = true" in str(caught.value)  # says how to fix it

    explicit_false = MINIMAL.replace("insecure = true", "insecure = false")
    with pytest.raises(ConfigError, match="tls"):
        load_pod_config(write_config(tmp_path, explicit_false))

    tls_only = MINIMAL.replace("insecure = true", '[tls]\nca = "ca.crt"')
    config = load_pod_config(write_config(tmp_path, tls_only))
    assert config.tls == TlsClientConfig(tmp_path.resolve() / "ca.crt")
    assert not config.tls.mutual and config.insecure is False


def replace(old: str, new: str) -> str:
    assert VALID.count(old) == 1, old
    return VALID.replace(old, new)


def without_section(header: str) -> str:
    start = VALID.index(header)
    end = VALID.find("\n[", start + 1)
    return VALID[:start] + (VALID[end + 1 :] if end >= 0 else "")


BAD: dict[str, tuple[str, str]] = {
    "toml syntax": (replace("min_rows = 12", "min_rows = = 12"), "line 15"),
    "unknown top-level key": ('colour = "red"\n' + VALID, "colour"),
    "policy key at the top": ("min_rows = 3\n" + VALID, "min_rows"),
    "unknown policy key": (
        replace("min_rows = 12", "min_rows = 12\nmax_rows = 5"),
        "policy.max_rows",
    ),
    "unknown tls key": (
        replace('ca = "tls/ca.crt"', 'ca = "tls/ca.crt"\nverify = false'),
        "tls.verify",
    ),
    "insecure inside tls": (
        replace('ca = "tls/ca.crt"', 'ca = "tls/ca.crt"\ninsecure = true'),
        "tls.insecure",
    ),
    "invalid name": (replace('name = "pod-a"', 'name = "Pod A"'), "name"),
    "name not a string": (replace('name = "pod-a"', "name = 3"), "name"),
    "missing name": (replace('name = "pod-a"\n', ""), "name"),
    "hub without port": (replace('hub = "127.0.0.1:7800"', 'hub = "127.0.0.1"'), "hub"),
    "port out of range": (replace('hub = "127.0.0.1:7800"', 'hub = "127.0.0.1:70000"'), "hub"),
    "port zero": (replace('hub = "127.0.0.1:7800"', 'hub = "127.0.0.1:0"'), "hub"),
    "hub with a scheme": (replace('hub = "127.0.0.1:7800"', 'hub = "grpc://hub:7800"'), "hub"),
    "hub not a string": (replace('hub = "127.0.0.1:7800"', "hub = 7800"), "hub"),
    "missing identity file": (replace('"keys/pod-a.key"', '"keys/nope.key"'), "identity"),
    "empty identity": (replace('identity = "keys/pod-a.key"', 'identity = ""'), "identity"),
    "missing store": (replace('store = "pod-a.db"\n', ""), "store"),
    "zero tasks at once": (
        replace("max_concurrent_tasks = 2", "max_concurrent_tasks = 0"),
        "max_concurrent_tasks",
    ),
    "tasks at once as text": (
        replace("max_concurrent_tasks = 2", 'max_concurrent_tasks = "2"'),
        "max_concurrent_tasks",
    ),
    "concurrency in policy": (
        replace("min_rows = 12", "min_rows = 12\nmax_concurrent_tasks = 2"),
        "policy.max_concurrent_tasks",
    ),
    "min_rows a bool": (replace("min_rows = 12", "min_rows = true"), "policy.min_rows"),
    "negative start_timeout": (
        replace("start_timeout = 90.5", "start_timeout = -1"),
        "policy.start_timeout",
    ),
    "infinite start_timeout": (
        replace("start_timeout = 90.5", "start_timeout = inf"),
        "policy.start_timeout",
    ),
    "unknown protocol": (
        replace('["fedavg", "analytics"]', '["fedavg", "sql"]'),
        "policy.protocols",
    ),
    "dotted protocol": (replace('["fedavg", "analytics"]', '["os.system"]'), "policy.protocols"),
    "empty protocol list": (replace('["fedavg", "analytics"]', "[]"), "policy.protocols"),
    "no modellers": (replace('modellers = ["alice", "bob"]', "modellers = []"), "policy.modellers"),
    "missing modellers": (replace('modellers = ["alice", "bob"]\n', ""), "policy.modellers"),
    "repeated modeller": (replace('["alice", "bob"]', '["alice", "alice"]'), "policy.modellers"),
    "modellers not a list": (replace('["alice", "bob"]', '"alice"'), "policy.modellers"),
    "missing policy": (without_section("[policy]"), "policy"),
    "policy not a table": (
        without_section("[policy]").replace(
            'store = "pod-a.db"', 'store = "pod-a.db"\npolicy = "open"'
        ),
        "policy",
    ),
    "key for a modeller not allowed": (
        replace('alice = "keys/alice.pub.json"', 'carol = "keys/carol.pub.json"'),
        "modeller_keys.carol",
    ),
    "key path not a string": (
        replace('alice = "keys/alice.pub.json"', "alice = 1"),
        "modeller_keys.alice",
    ),
    "certificate without key": (replace('key = "tls/pod-a.key"\n', ""), "tls.key"),
    "tls without ca": (replace('ca = "tls/ca.crt"\n', ""), "tls.ca"),
    "no datasets": (VALID.split("[datasets.default]", maxsplit=1)[0], "datasets"),
    "invalid dataset name": (replace("[datasets.extra]", "[datasets.Extra]"), "datasets.Extra"),
    "dataset not a table": (
        replace("[datasets.extra]", "[datasets]\nextra = 'x.csv'\n[datasets.other]"),
        "datasets.extra",
    ),
    "unknown datasource kind": (replace('kind = "csv"', 'kind = "sql"'), "datasets.extra"),
    "unknown datasource key": (
        replace('kind = "csv"', 'kind = "csv"\nsheet = 1'),
        "datasets.extra",
    ),
    "dataset without path": (replace('path = "/srv/data/extra.csv"\n', ""), "datasets.extra.path"),
    "dataset path not a string": (
        replace('path = "/srv/data/extra.csv"', "path = 3"),
        "datasets.extra.path",
    ),
    "dataset with a date": (
        replace('label_column = "label"', "label_column = 1979-05-27"),
        "datasets.default.label_column",
    ),
    "suffix of unknown format": (
        replace('path = "data/a.csv"', 'path = "data/a.xlsx"'),
        "datasets.default",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_config_names_the_file_and_the_key(tmp_path: Path, case: str) -> None:
    text, key = BAD[case]
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_pod_config(path)
    message = str(caught.value)
    assert str(path.resolve()) in message, message
    assert key in message, message


def test_the_valid_base_of_the_bad_cases_loads(tmp_path: Path) -> None:
    # the control for the parametrised cases: each differs from this file in one place
    assert load_pod_config(write_config(tmp_path, VALID)).name == "pod-a"


def test_a_missing_unreadable_or_huge_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_pod_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_pod_config(tmp_path)
    (tmp_path / "big.toml").write_text("# " + "x" * (1024 * 1024) + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_pod_config(tmp_path / "big.toml")
    (tmp_path / "latin.toml").write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="UTF-8"):
        load_pod_config(tmp_path / "latin.toml")


def test_a_pod_config_built_in_code_is_checked() -> None:
    def build(name: str = "pod-a", insecure: bool = True) -> PodConfig:
        return PodConfig(
            name,
            HubAddress("localhost", 1),
            Path("/k"),
            Path("/s"),
            PodPolicy(allowed_modellers=frozenset({"alice"})),
            {"default": {"kind": "table", "path": "/d.csv"}},
            insecure=insecure,
        )

    assert build().max_concurrent_tasks == 4
    with pytest.raises(ConfigError, match="insecure"):
        build(insecure=False)
    with pytest.raises(ConfigError, match="name"):
        build("Pod A")


@pytest.mark.parametrize("limit", [0, -1, True, 1.5, "2"])
def test_pod_policy_refuses_a_bad_concurrency_limit(limit: object) -> None:
    with pytest.raises(ConfigError, match="max_concurrent_tasks"):
        PodPolicy(max_concurrent_tasks=limit)  # type: ignore[arg-type]


# --- hub addresses ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:7800", "127.0.0.1", 7800),
        ("hub.example.org:1", "hub.example.org", 1),
        ("localhost:65535", "localhost", 65535),
        ("[::1]:7800", "::1", 7800),
        ("[fe80::1%eth0]:443", "fe80::1%eth0", 443),
    ],
)
def test_hub_addresses_parse_and_print_back(text: str, host: str, port: int) -> None:
    address = parse_hub_address(text)
    assert address == HubAddress(host, port)
    assert str(address) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "localhost",
        ":7800",
        "localhost:",
        "localhost:0",
        "localhost:65536",
        "localhost:99999999999",
        "localhost:-1",
        "localhost:+80",
        "localhost:\uff18\uff10",
        "::1:7800",
        "[::1]7800",
        "[::1",
        "http://hub:80",
        "hub/path:80",
        "hub name:80",
        "-hub:80",
    ],
)
def test_bad_hub_addresses_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_hub_address(text)
