"""Models rebuilt from a registered name plus JSON config, never from pickled objects.

A worker receives a :class:`ModelSpec` (``{"name": "mlp", "config": {...}}``), looks the
name up in :data:`MODELS` and calls the factory with the config. Factories validate their
config strictly, so a typo in a key is an error, not a silently ignored option.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fedloom._registry import Registry
from fedloom.algorithms.ml._rng import seeded
from fedloom.errors import ConfigError, SchemaMismatchError

__all__ = ["MODELS", "ModelFactory", "ModelSpec", "build_model"]

ModelFactory = Callable[[Mapping[str, Any]], nn.Module]

MODELS: Registry[ModelFactory] = Registry("model")

_MAX_SEED = 2**64


def _check_json_like(where: str, value: object) -> Any:
    """A deep, plain-container copy of ``value`` if it is JSON-like, else ConfigError."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return value
    if isinstance(value, list | tuple):
        return [_check_json_like(f"{where}[{i}]", item) for i, item in enumerate(value)]
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where} has a non-string key {key!r}")
            out[key] = _check_json_like(f"{where}.{key}", item)
        return out
    raise ConfigError(f"{where} must be JSON-like, got a {type(value).__name__}")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model name and its JSON-like config."""

    name: str
    config: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Keep a private, plain-container copy of the config (so the spec stays picklable).

        Raises:
            ConfigError: ``name`` is not a string, or ``config`` is not a JSON-like mapping.
        """
        if not isinstance(self.name, str):
            raise ConfigError(f"model name must be a string, got {type(self.name).__name__}")
        if not isinstance(self.config, Mapping):
            raise ConfigError(f"model config must be a mapping, got {type(self.config).__name__}")
        object.__setattr__(self, "config", _check_json_like("model config", self.config))

    def to_config(self) -> dict[str, Any]:
        """``{"name": ..., "config": {...}}`` with plain (JSON-able) containers."""
        return {"name": self.name, "config": _check_json_like("model config", self.config)}

    @classmethod
    def from_config(cls, config: object) -> ModelSpec:
        """Rebuild a spec from :meth:`to_config` output; ``"config"`` may be left out.

        Raises:
            ConfigError: not a mapping, unknown keys, missing or non-string ``name``, or a
                config that is not a JSON-like mapping.
        """
        if not isinstance(config, Mapping):
            raise ConfigError(f"a model spec must be a mapping, got {type(config).__name__}")
        unknown = sorted(repr(key) for key in config if key not in ("name", "config"))
        if unknown:
            raise ConfigError(f"unknown model spec keys: {', '.join(unknown)}")
        if "name" not in config:
            raise ConfigError("model spec is missing 'name'")
        return cls(name=config["name"], config=config.get("config", {}))


def build_model(spec: ModelSpec, *, seed: int | None = None) -> nn.Module:
    """Build the model ``spec`` names; ``seed`` makes the initial weights reproducible.

    Seeding happens inside :func:`~fedloom.algorithms.ml._rng.seeded`, so the global torch
    RNG is left as it was.

    Raises:
        UnknownNameError: ``spec.name`` is not registered in :data:`MODELS`.
        ConfigError: the config does not fit the model, ``seed`` is not an int in
            ``[0, 2**64)``, or the factory did not return a ``torch.nn.Module``.
    """
    factory = MODELS.get(spec.name)
    if seed is None:
        model = factory(_check_json_like("model config", spec.config))
    else:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < _MAX_SEED:
            raise ConfigError(f"seed must be an int in [0, 2**64), got {seed!r}")
        with seeded(seed, torch.device("cpu"), exclusive=True):
            model = factory(_check_json_like("model config", spec.config))
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"model factory {spec.name!r} returned a {type(model).__name__}, not a torch.nn.Module"
        )
    return model


# --- config checks ----------------------------------------------------------------------


def _check_keys(
    model: str, config: Mapping[str, Any], required: set[str], optional: set[str]
) -> None:
    if not isinstance(config, Mapping):
        raise ConfigError(f"{model} config must be a mapping, got {type(config).__name__}")
    unknown = sorted(repr(key) for key in config if key not in required | optional)
    if unknown:
        raise ConfigError(f"{model} config has unknown keys: {', '.join(unknown)}")
    missing = sorted(required - set(config))
    if missing:
        raise ConfigError(f"{model} config is missing {', '.join(map(repr, missing))}")


def _positive_int(model: str, key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{model} config {key!r} must be an int, got {value!r}")
    if value <= 0:
        raise ConfigError(f"{model} config {key!r} must be > 0, got {value}")
    return value


def _positive_ints(model: str, key: str, value: object, *, allow_empty: bool) -> list[int]:
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{model} config {key!r} must be a list of ints, got {value!r}")
    if not value and not allow_empty:
        raise ConfigError(f"{model} config {key!r} must not be empty")
    return [_positive_int(model, f"{key}[{i}]", item) for i, item in enumerate(value)]


def _fraction(model: str, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{model} config {key!r} must be a number, got {value!r}")
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{model} config {key!r} must be in [0, 1), got {value}")
    return float(value)


# --- built-in models --------------------------------------------------------------------


@MODELS.register("mlp")
def mlp(config: Mapping[str, Any]) -> nn.Module:
    """Multi-layer perceptron: ``Flatten``, then Linear-ReLU(-Dropout) per hidden size.

    Config: ``in_features`` (int), ``hidden`` (list of ints, may be empty),
    ``out_features`` (int), ``dropout`` (float in [0, 1), default 0.0).

    Raises:
        ConfigError: missing, unknown, mistyped or non-positive entries (named).
    """
    _check_keys("mlp", config, {"in_features", "hidden", "out_features"}, {"dropout"})
    width = _positive_int("mlp", "in_features", config["in_features"])
    hidden = _positive_ints("mlp", "hidden", config["hidden"], allow_empty=True)
    out_features = _positive_int("mlp", "out_features", config["out_features"])
    dropout = _fraction("mlp", "dropout", config.get("dropout", 0.0))
    layers: list[nn.Module] = [nn.Flatten()]
    for size in hidden:
        layers += [nn.Linear(width, size), nn.ReLU()]
        if dropout > 0.0:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


@MODELS.register("cnn")
def cnn(config: Mapping[str, Any]) -> nn.Module:
    """Small CNN: Conv3x3-ReLU-MaxPool2 per ``channels`` entry, then Flatten-Linear-ReLU-Linear.

    Each convolution pads by 1, so only the pooling halves the image.

    Config: ``in_channels``, ``image_size`` (square images), ``channels`` (non-empty list),
    ``hidden``, ``out_features``; all positive ints. ``image_size`` must be at least
    ``2 ** len(channels)`` so that every pooling step has something to pool.

    Raises:
        ConfigError: missing, unknown, mistyped or non-positive entries (named), or an
            image too small for the number of pooling steps.
    """
    _check_keys(
        "cnn", config, {"in_channels", "image_size", "channels", "hidden", "out_features"}, set()
    )
    width = _positive_int("cnn", "in_channels", config["in_channels"])
    size = _positive_int("cnn", "image_size", config["image_size"])
    channels = _positive_ints("cnn", "channels", config["channels"], allow_empty=False)
    hidden = _positive_int("cnn", "hidden", config["hidden"])
    out_features = _positive_int("cnn", "out_features", config["out_features"])
    if size < 2 ** len(channels):
        raise ConfigError(
            f"cnn config 'image_size' {size} is too small for {len(channels)} pooling steps "
            f"(needs at least {2 ** len(channels)})"
        )
    layers: list[nn.Module] = []
    in_channels, image_size = width, size
    for count in channels:
        layers += [nn.Conv2d(width, count, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        width = count
        size //= 2
    layers += [
        nn.Flatten(),
        nn.Linear(width * size * size, hidden),
        nn.ReLU(),
        nn.Linear(hidden, out_features),
    ]
    return _ImageCNN(*layers, in_channels=in_channels, image_size=image_size, pools=len(channels))


class _ImageCNN(nn.Sequential):
    """The ``cnn`` model's layers, taking images channels first or channels last.

    Channels first is ``(N, C, H, W)``; channels last, ``(N, H, W, C)`` (what the ``image``
    loader gives by default), is taken when that is unambiguous.

    Input whose axis 1 is ``in_channels`` is channels first; otherwise input whose last
    axis is ``in_channels`` is moved to channels first. The layers, their state_dict keys
    and their initialisation are those of the plain ``nn.Sequential``.

    Raises:
        SchemaMismatchError: (on call) the input fits neither layout, or its height or
            width do not pool down to what the linear layer takes (the message gives the
            expected and the actual shape).
    """

    def __init__(
        self, *layers: Any, in_channels: int = 0, image_size: int = 0, pools: int = 0
    ) -> None:
        super().__init__(*layers)
        # 0: a slice of the network (``model[1:]``), which takes what its layers take
        self.in_channels = in_channels
        self.image_size = image_size
        self.pools = pools

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = self._channels_first(input) if self.in_channels else input
        for layer in self:  # nn.Sequential.forward
            x = layer(x)
        return x

    def _channels_first(self, x: torch.Tensor) -> torch.Tensor:
        channels, size = self.in_channels, self.image_size
        shape = tuple(x.shape)
        if x.ndim == 4 and shape[1] == channels:
            height, width = shape[2], shape[3]
        elif x.ndim == 4 and shape[3] == channels:
            height, width = shape[1], shape[2]
            x = x.permute(0, 3, 1, 2)
        else:
            height = width = -1
        pooled = size >> self.pools
        if height >> self.pools != pooled or width >> self.pools != pooled:
            raise SchemaMismatchError(
                f"the cnn model takes images of shape (N, {channels}, {size}, {size}) "
                f"(channels first) or (N, {size}, {size}, {channels}) (channels last), "
                f"got {shape}"
            )
        return x
