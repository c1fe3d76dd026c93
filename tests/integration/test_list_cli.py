"""``fedloom list``: every name a user may write, the built-in ones and a plugin's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .test_demo_cli import run_cli

PLUGIN = '''
from fedloom.algorithms.ml import MODELS
from torch import nn


@MODELS.register("tiny-logreg")
def tiny_logreg(config):
    """A one-layer model for the listing test."""
    return nn.Linear(2, 2)
'''


def test_every_kind_lists_its_built_in_names(tmp_path: Path) -> None:
    done = run_cli("list", "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    listing = {
        kind: {e["name"]: e["summary"] for e in entries}
        for kind, entries in json.loads(done.stdout).items()
    }
    assert set(listing["protocols"]) >= {
        "analytics",
        "fedavg",
        "inference",
        "file_statistics",
        "results_only",
    }
    assert set(listing["models"]) >= {"mlp", "cnn"}
    assert set(listing["algorithms"]) >= {"dataset_summary", "model_evaluation"}
    assert set(listing["datasources"]) == {"csv", "parquet", "table", "folder"}
    assert set(listing["loaders"]) >= {"image", "bytes", "table"}
    assert set(listing["hooks"]) >= {"progress", "log"}
    assert set(listing["client-data"]) >= {"synthetic", "partitioned", "digits"}
    assert set(listing["strategies"]) >= {"fedavg", "fedprox", "fedadam"}
    assert set(listing["privacy"]) >= {"clip"}
    assert "quantiles" in listing["statistics"]
    assert listing["protocols"]["fedavg"].startswith("Federated averaging")
    people = run_cli("list", "models", cwd=tmp_path)
    assert people.returncode == 0 and "Multi-layer perceptron" in people.stdout


def test_a_plugin_adds_its_names_and_mistakes_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "my_models.py").write_text(PLUGIN)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    done = run_cli("list", "models", "--json", "--plugin", "my_models", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    models = {e["name"]: e["summary"] for e in json.loads(done.stdout)["models"]}
    assert models["tiny-logreg"] == "A one-layer model for the listing test"
    for args, words in (
        (("list", "lizards"), "unknown kind 'lizards'; choose one of protocols"),
        (("list", "--plugin", "no_such_plugin_here"), "cannot import plugin module"),
    ):
        wrong = run_cli(*args, cwd=tmp_path)
        assert wrong.returncode == 3
        assert wrong.stderr.strip().count("\n") == 0 and words in wrong.stderr, wrong.stderr
