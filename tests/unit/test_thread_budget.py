"""Thread budgets: a pod's cores shared among its task children, read from pod.toml."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedloom._cluster import LocalCluster, PodSpec
from fedloom.errors import ConfigError
from fedloom.pod import load_pod_config
from fedloom.worker import IsolationSettings
from fedloom.worker._threads import available_cores, share_of_cores

POD_TOML = """\
name = "pod-a"
hub = "localhost:7800"
identity = "keys/pod-a.key"
store = "pod-a.db"
insecure = true
max_concurrent_tasks = 3
{worker}
[policy]
modellers = ["alice"]

[datasets.default]
kind = "csv"
path = "a.csv"
label_column = "label"
"""


def _pod_toml(folder: Path, worker: str) -> Path:
    (folder / "keys").mkdir(exist_ok=True)
    (folder / "keys" / "pod-a.key").write_text("{}")  # only its existence is checked
    frame = pd.DataFrame(np.zeros((4, 2)), columns=["f0", "f1"])
    frame["label"] = [0, 1, 0, 1]
    frame.to_csv(folder / "a.csv", index=False)
    path = folder / "pod.toml"
    path.write_text(POD_TOML.format(worker=worker))
    return path


@pytest.mark.parametrize(
    ("cores", "parts", "threads"), [(2, 1, 2), (2, 4, 1), (16, 3, 5), (16, 2, 8), (1, 1, 1)]
)
def test_cores_are_shared_with_at_least_one_thread_each(
    cores: int, parts: int, threads: int
) -> None:
    assert share_of_cores(cores, parts) == threads


def test_a_child_gets_the_pods_cores_over_its_concurrent_tasks_by_default() -> None:
    assert IsolationSettings(cores=8).thread_budget(4) == 2
    assert IsolationSettings(cores=8).thread_budget(16) == 1
    assert IsolationSettings().thread_budget(1) == available_cores()
    assert IsolationSettings(threads=3, cores=8).thread_budget(4) == 3  # explicit wins


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_a_bad_budget_is_a_config_error(value: object) -> None:
    with pytest.raises(ConfigError, match="threads must be an integer >= 1"):
        IsolationSettings(threads=value)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="cores must be an integer >= 1"):
        IsolationSettings(cores=value)  # type: ignore[arg-type]


def test_pod_toml_sets_threads_or_cores(tmp_path: Path) -> None:
    config = load_pod_config(_pod_toml(tmp_path, "[worker]\nthreads = 2\n"))
    assert config.isolation.threads == 2
    assert config.isolation.thread_budget(config.max_concurrent_tasks) == 2
    config = load_pod_config(_pod_toml(tmp_path, "[worker]\ncores = 7\n"))
    assert config.isolation.thread_budget(config.max_concurrent_tasks) == 2  # 7 // 3
    config = load_pod_config(_pod_toml(tmp_path, ""))
    assert config.isolation.thread_budget(3) == share_of_cores(available_cores(), 3)


@pytest.mark.parametrize("line", ["threads = 0", 'threads = "2"', "cores = 0", "cores = 1.5"])
def test_a_bad_budget_in_pod_toml_names_the_key(tmp_path: Path, line: str) -> None:
    key = line.split(" ", maxsplit=1)[0]
    with pytest.raises(ConfigError, match=rf"pod\.toml: worker\.{key}: must be an integer >= 1"):
        load_pod_config(_pod_toml(tmp_path, f"[worker]\n{line}\n"))


def test_local_cluster_pods_share_the_machine(tmp_path: Path) -> None:
    data = {"default": {"kind": "csv", "path": str(tmp_path / "a.csv"), "label_column": "label"}}
    pods = {f"pod-{i}": PodSpec(datasets=data, max_concurrent_tasks=1) for i in range(3)}
    pods["pod-3"] = PodSpec(datasets=data, worker={"threads": 5})
    cluster = LocalCluster(tmp_path / "cluster", pods)
    cluster.hub_port = 7800  # the pod.toml names the hub's address
    for pod in ("pod-0", "pod-3"):
        cluster._write_pod_config(pod, pods[pod])
    (tmp_path / "a.csv").write_text("f0,label\n0,1\n")
    for pod in ("pod-0", "pod-3"):
        (tmp_path / "cluster" / "keys").mkdir(parents=True, exist_ok=True)
        (tmp_path / "cluster" / "keys" / f"{pod}.key").write_text("{}")
        (tmp_path / "cluster" / "keys" / "modeller.pub.json").write_text("{}")
    shared = load_pod_config(cluster.pod_config_path("pod-0")).isolation
    assert shared.cores == share_of_cores(available_cores(), 4)
    assert shared.thread_budget(1) == share_of_cores(available_cores(), 4)
    own = load_pod_config(cluster.pod_config_path("pod-3")).isolation
    assert (own.threads, own.cores) == (5, None)
