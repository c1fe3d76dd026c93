"""A task that cannot work is refused on the modeller, before any pod hears of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedloom import FedAvg, ModelSpec, run_local
from fedloom.errors import ConfigError, UnknownNameError
from fedloom.modeller._task_file import load_task_file
from fedloom.plugins import MemoryExperimentStore
from fedloom.pod import ArraySource, MemoryPodStore


def _pods() -> dict[str, ArraySource]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 4)).astype(np.float32)
    return {"pod-a": ArraySource(x, (x[:, 0] > 0).astype(np.int64))}


@pytest.mark.parametrize(
    ("model", "error", "words"),
    [
        (ModelSpec("no-such-model", {}), UnknownNameError, "no-such-model"),
        (ModelSpec("mlp", {"hidden": [4], "out_features": 2}), ConfigError, "in_features"),
        (
            ModelSpec(
                "cnn",
                {
                    "in_channels": 1,
                    "image_size": 2,
                    "channels": [4, 4],
                    "hidden": 8,
                    "out_features": 2,
                },
            ),
            ConfigError,
            "too small",
        ),
    ],
    ids=["unknown-model", "missing-key", "config-the-factory-refuses"],
)
def test_a_model_that_cannot_be_built_leaves_no_trace_on_the_pods(
    model: ModelSpec, error: type[Exception], words: str
) -> None:
    pod_store, experiments = MemoryPodStore(), MemoryExperimentStore()
    with pytest.raises(error, match=words):
        run_local(
            FedAvg(model=model, rounds=1),
            _pods(),
            pod_stores={"pod-a": pod_store},
            modeller_store=experiments,
        )
    assert pod_store.task_runs() == []  # no JOB_REQUEST reached the pod
    assert experiments.list_experiments() == []


def test_a_task_file_with_an_unknown_model_names_the_table(tmp_path: Path) -> None:
    (tmp_path / "alice.key").write_text("{}")  # only its existence is checked
    (tmp_path / "task.toml").write_text(
        'hub = "127.0.0.1:7800"\nidentity = "alice.key"\npods = ["pod-a"]\ninsecure = true\n'
        '[task]\nprotocol = "fedavg"\n[task.config]\nrounds = 1\n'
        '[task.config.model]\nname = "resnet-9000"\n'
    )
    with pytest.raises(ConfigError, match=r"task\.config: .*resnet-9000"):
        load_task_file(tmp_path / "task.toml")
