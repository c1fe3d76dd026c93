"""An example plugin: a model registered by name, for pods and modellers alike.

A pod's admin lists the module in pod.toml (``plugins = ["wine_plugin"]``) once they have
read it: the pod and each task's child process import it, so tasks may name the model.
A modeller lists it in the task file (``plugins = ["wine_plugin"]``) so that it can check
and build the same model. Python finds the module on its path: start both with
``PYTHONPATH=plugins`` (or install the module as a package).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from fedloom.algorithms.ml import MODELS
from fedloom.errors import ConfigError


@MODELS.register("wine_logreg")
def wine_logreg(config: Mapping[str, Any]) -> nn.Module:
    """Multinomial logistic regression: one linear layer, ``in_features`` -> ``classes``."""
    unknown = sorted(set(config) - {"in_features", "classes"})
    if unknown:
        raise ConfigError(f"wine_logreg config has unknown keys: {unknown}")
    try:
        in_features, classes = int(config["in_features"]), int(config["classes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError("wine_logreg needs integer in_features and classes") from exc
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, classes))
