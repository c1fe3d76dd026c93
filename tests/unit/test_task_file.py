"""Task files (``fedloom run TASK.toml``): the schema, path resolution, every kind of mistake."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedloom import Analytics, AnalyticsRequest, ResultsOnly, run_local
from fedloom.errors import ConfigError
from fedloom.modeller._task_file import TaskFile, load_task_file
from fedloom.pod import ArraySource
from fedloom.session import RequestPolicy
from fedloom.transport._hub_config import HubAddress, TlsClientConfig

VALID = """\
hub = "hub.example.org:7800"
identity = "keys/alice.key"
pods = ["pod-a", "pod-b"]
dataset = "train"
name = "my experiment #1"
store = "alice.db"

[tls]
ca = "tls/ca.crt"
certificate = "tls/alice.crt"
key = "tls/alice.key"

[pod_keys]
pod-a = "keys/pod-a.pub.json"

[policy]
timeout = 60
on_timeout = "stop"
min_replies = 2

[task]
protocol = "analytics"

[task.config]
timeout = 30.5

[task.config.request]
statistics = ["mean", "count"]
columns = ["age"]
"""

MINIMAL = """\
hub = "127.0.0.1:7800"
identity = "/KEYS/alice.key"
pods = ["pod-a"]
insecure = true

[task]
protocol = "results_only"
config = { algorithm = "dataset_summary" }
"""


def write_task(folder: Path, text: str, name: str = "task.toml") -> Path:
    (folder / "keys").mkdir(exist_ok=True)
    (folder / "keys" / "alice.key").write_text("{}")  # only its existence is checked
    path = folder / name
    path.write_text(text.replace("/KEYS", str(folder / "keys")))
    return path


def test_a_full_task_file_is_read_with_paths_relative_to_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = (tmp_path / "work").resolve()
    folder.mkdir()
    path = write_task(folder, VALID)
    monkeypatch.chdir(tmp_path)

    task = load_task_file(path)

    assert task.hub_address == HubAddress("hub.example.org", 7800)
    assert task.identity_path == folder / "keys" / "alice.key"
    assert task.pods == ("pod-a", "pod-b")
    assert task.dataset == "train"
    assert task.name == "my experiment #1"
    assert task.store_path == folder / "alice.db"
    assert task.tls == TlsClientConfig(
        folder / "tls" / "ca.crt", folder / "tls" / "alice.crt", folder / "tls" / "alice.key"
    )
    assert task.insecure is False
    assert task.pod_keys == {"pod-a": folder / "keys" / "pod-a.pub.json"}
    assert task.policy == {"timeout": 60, "on_timeout": "stop", "min_replies": 2}
    assert task.path == folder / "task.toml"
    request = AnalyticsRequest(statistics=("mean", "count"), columns=("age",))
    assert task.protocol == Analytics(request=request, timeout=30.5)
    # the raw policy is what the modeller's RequestPolicy is built from
    policy = RequestPolicy.from_dict(task.policy)
    assert (policy.timeout, policy.on_timeout.value, policy.min_replies) == (60, "stop", 2)


def test_a_minimal_task_file_gets_the_defaults_and_runs(tmp_path: Path) -> None:
    task = load_task_file(write_task(tmp_path, MINIMAL))
    assert task.insecure is True and task.tls is None
    assert task.identity_path == tmp_path.resolve() / "keys" / "alice.key"  # absolute stays
    assert (task.dataset, task.name, task.store_path) == ("default", None, None)
    assert (task.pod_keys, task.policy) == ({}, {})
    assert task.protocol == ResultsOnly("dataset_summary")

    rng = np.random.default_rng(1)
    source = ArraySource(rng.normal(size=(20, 3)).astype(np.float32))
    run = run_local(task.protocol, dict.fromkeys(task.pods, source), dataset=task.dataset)
    assert run.result["pod-a"].body["rows"] == 20


def test_tls_and_insecure_exclude_each_other(tmp_path: Path) -> None:
    both = MINIMAL.replace("insecure = true", 'insecure = true\n[tls]\nca = "ca.crt"')
    with pytest.raises(ConfigError, match=r"insecure.*remove one"):
        load_task_file(write_task(tmp_path, both))
    neither = MINIMAL.replace("insecure = true\n", "")
    with pytest.raises(ConfigError, match=r"tls: missing.*insecure = true"):
        load_task_file(write_task(tmp_path, neither))
    tls = MINIMAL.replace("insecure = true", '[tls]\nca = "../ca.crt"')
    task = load_task_file(write_task(tmp_path, tls))
    assert task.tls == TlsClientConfig(tmp_path.resolve().parent / "ca.crt")


def test_a_task_file_built_in_code_is_checked() -> None:
    def build(pods: tuple[str, ...], insecure: bool = True) -> TaskFile:
        return TaskFile(
            HubAddress("localhost", 1),
            Path("/k"),
            pods,
            ResultsOnly("dataset_summary"),
            insecure=insecure,
        )

    assert build(("pod-a",)).pods == ("pod-a",)
    for pods in [(), ("pod-a", "pod-a"), ("Pod A",)]:
        with pytest.raises(ConfigError, match="pod"):
            build(pods)
    with pytest.raises(ConfigError, match="insecure"):
        build(("pod-a",), insecure=False)


def replace(old: str, new: str) -> str:
    assert VALID.count(old) == 1, old
    return VALID.replace(old, new)


TASK_TABLE = VALID[VALID.index("[task]") :]
WITHOUT_TASK = VALID[: VALID.index("[task]")]

BAD: dict[str, tuple[str, str]] = {
    "toml syntax": (replace('dataset = "train"', "dataset = train"), "line 4"),
    "unknown top-level key": (
        replace('dataset = "train"', 'dataset = "train"\nrounds = 3'),
        "rounds",
    ),
    "missing hub": (replace('hub = "hub.example.org:7800"\n', ""), "hub"),
    "hub port out of range": (replace(":7800", ":65536"), "hub"),
    "missing identity file": (replace('"keys/alice.key"', '"keys/bob.key"'), "identity"),
    "missing pods": (replace('pods = ["pod-a", "pod-b"]\n', ""), "pods"),
    "no pods": (replace('["pod-a", "pod-b"]', "[]"), "pods"),
    "repeated pod": (replace('["pod-a", "pod-b"]', '["pod-a", "pod-a"]'), "pods"),
    "invalid pod name": (replace('["pod-a", "pod-b"]', '["pod-a", "pod b"]'), "pods"),
    "pods not a list": (replace('["pod-a", "pod-b"]', '"pod-a"'), "pods"),
    "invalid dataset name": (replace('dataset = "train"', 'dataset = "../train"'), "dataset"),
    "empty experiment name": (replace('name = "my experiment #1"', 'name = ""'), "name"),
    "experiment name not a string": (replace('name = "my experiment #1"', "name = 1"), "name"),
    "store not a string": (replace('store = "alice.db"', "store = true"), "store"),
    "insecure and tls": (
        replace('store = "alice.db"', 'store = "alice.db"\ninsecure = true'),
        "insecure",
    ),
    "insecure not a bool": (
        replace('store = "alice.db"', 'store = "alice.db"\ninsecure = "yes"'),
        "insecure",
    ),
    "certificate without key": (replace('key = "tls/alice.key"\n', ""), "tls.key"),
    "key for a pod not in pods": (replace('pod-a = "keys/', 'pod-c = "keys/'), "pod_keys.pod-c"),
    "invalid pod key name": (replace('pod-a = "keys/', 'Pod_A = "keys/'), "pod_keys.Pod_A"),
    "unknown policy key": (replace("min_replies = 2", "retries = 2"), "policy.retries"),
    "policy with a date": (replace("timeout = 60", "timeout = 2024-01-01"), "policy.timeout"),
    "policy not a table": (
        replace('[policy]\ntimeout = 60\non_timeout = "stop"\nmin_replies = 2\n', "").replace(
            'store = "alice.db"', 'store = "alice.db"\npolicy = 1'
        ),
        "policy",
    ),
    "missing task": (WITHOUT_TASK, "task"),
    "unknown task key": (
        replace('protocol = "analytics"', 'protocol = "analytics"\nrounds = 2'),
        "task.rounds",
    ),
    "unknown protocol": (replace('protocol = "analytics"', 'protocol = "sql"'), "task.protocol"),
    "dotted protocol": (
        replace('protocol = "analytics"', 'protocol = "os.system"'),
        "task.protocol",
    ),
    "protocol not a string": (replace('protocol = "analytics"', "protocol = 3"), "task.protocol"),
    "missing protocol": (replace('protocol = "analytics"\n', ""), "task.protocol"),
    "unknown protocol setting": (
        replace("timeout = 30.5", "timeout = 30.5\nrounds = 3"),
        "task.config",
    ),
    "bad protocol setting": (replace("timeout = 30.5", "timeout = -1"), "task.config"),
    "bad analytics request": (replace('["mean", "count"]', '["median-ish"]'), "task.config"),
    "missing protocol settings": (WITHOUT_TASK + '[task]\nprotocol = "analytics"\n', "task.config"),
    "protocol settings with a date": (
        replace("timeout = 30.5", "timeout = 12:30:00"),
        "task.config.timeout",
    ),
    "protocol settings not a table": (
        WITHOUT_TASK + '[task]\nprotocol = "analytics"\nconfig = "x"\n',
        "task.config",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_task_file_names_the_file_and_the_key(tmp_path: Path, case: str) -> None:
    text, key = BAD[case]
    path = write_task(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_task_file(path)
    message = str(caught.value)
    assert str(path.resolve()) in message, message
    assert key in message, message


def test_the_valid_base_of_the_bad_cases_loads(tmp_path: Path) -> None:
    assert load_task_file(write_task(tmp_path, VALID)).pods == ("pod-a", "pod-b")


def test_a_missing_task_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_task_file(tmp_path / "TASK.toml")
