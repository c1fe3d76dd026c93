"""Tests for fedloom.algorithms.ml._torch_adapter and fedloom.algorithms.ml._models."""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from torch import nn

from fedloom.algorithms.ml import (
    MODELS,
    ModelSpec,
    build_model,
    load_arrays,
    state_to_arrays,
)
from fedloom.errors import ConfigError, UnknownNameError

Array = npt.NDArray[Any]

MLP = ModelSpec("mlp", {"in_features": 4, "hidden": [8, 6], "out_features": 3})
CNN = ModelSpec(
    "cnn",
    {"in_channels": 1, "image_size": 8, "channels": [4, 8], "hidden": 16, "out_features": 10},
)


def with_batchnorm() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Linear(5, 2))


# --- state_to_arrays / load_arrays ------------------------------------------------------


def test_state_to_arrays_copies_every_entry() -> None:
    model = with_batchnorm()
    arrays = state_to_arrays(model)
    assert list(arrays) == list(model.state_dict())
    assert arrays["1.num_batches_tracked"].dtype == np.int64
    for key, tensor in model.state_dict().items():
        assert arrays[key].flags.c_contiguous
        assert arrays[key].flags.writeable
        np.testing.assert_array_equal(arrays[key], tensor.numpy())
    arrays["0.weight"][...] = 42.0
    assert not torch.all(model.state_dict()["0.weight"] == 42.0)


def test_state_to_arrays_non_contiguous_parameter() -> None:
    model = nn.Linear(3, 2)
    with torch.no_grad():
        model.weight = nn.Parameter(torch.arange(6.0).reshape(3, 2).t())
    arrays = state_to_arrays(model)
    assert arrays["weight"].flags.c_contiguous
    np.testing.assert_array_equal(arrays["weight"], [[0.0, 2.0, 4.0], [1.0, 3.0, 5.0]])


def test_round_trip_between_models() -> None:
    source = build_model(MLP, seed=1)
    target = build_model(MLP, seed=2)
    load_arrays(target, state_to_arrays(source))
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(source(x), target(x))


def test_load_accepts_read_only_views() -> None:
    source, target = with_batchnorm(), with_batchnorm()
    arrays = state_to_arrays(source)
    for array in arrays.values():
        array.setflags(write=False)
    load_arrays(target, arrays)  # warnings are errors: no "non-writable" warning
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value)
    target.state_dict()["0.weight"].add_(1.0)  # the module does not alias the caller's arrays
    np.testing.assert_array_equal(arrays["0.weight"], source.state_dict()["0.weight"].numpy())


def _bad_arrays(change: str) -> tuple[dict[str, Any], str]:
    arrays: dict[str, Any] = state_to_arrays(with_batchnorm())
    if change == "unknown":
        arrays["extra.weight"] = np.zeros(1, dtype=np.float32)
        return arrays, "extra.weight"
    if change == "missing":
        del arrays["2.bias"]
        return arrays, "2.bias"
    if change == "shape":
        arrays["0.weight"] = np.zeros((4, 5), dtype=np.float32)
        return arrays, "0.weight"
    if change == "dtype":
        arrays["0.bias"] = arrays["0.bias"].astype(np.float64)
        return arrays, "0.bias"
    if change == "int-dtype":
        arrays["1.num_batches_tracked"] = np.array(3, dtype=np.int32)
        return arrays, "1.num_batches_tracked"
    if change == "nan":
        arrays["1.running_mean"][2] = np.nan
        return arrays, "1.running_mean"
    if change == "inf":
        arrays["2.weight"][0, 0] = np.inf
        return arrays, "2.weight"
    arrays["0.bias"] = arrays["0.bias"].tolist()
    return arrays, "0.bias"


@pytest.mark.parametrize(
    "change", ["unknown", "missing", "shape", "dtype", "int-dtype", "nan", "inf", "list"]
)
def test_load_is_strict_and_atomic(change: str) -> None:
    model = with_batchnorm()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    arrays, key = _bad_arrays(change)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_arrays(model, arrays)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])


def test_unsupported_dtype_is_a_config_error() -> None:
    model = nn.Linear(2, 2).to(torch.bfloat16)
    with pytest.raises(ConfigError, match="bfloat16"):
        state_to_arrays(model)


# --- models -----------------------------------------------------------------------------


def test_builtin_models_are_registered() -> None:
    assert {"cnn", "mlp"} <= set(MODELS.names())


def test_mlp_shapes_and_layers() -> None:
    model = build_model(MLP, seed=0)
    assert model(torch.zeros(7, 4)).shape == (7, 3)
    assert model(torch.zeros(7, 2, 2)).shape == (7, 3)  # flattened
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 2
    dropout = build_model(ModelSpec("mlp", {**MLP.config, "dropout": 0.5}))
    assert sum(isinstance(m, nn.Dropout) for m in dropout.modules()) == 2
    linear = build_model(ModelSpec("mlp", {"in_features": 4, "hidden": [], "out_features": 2}))
    assert [type(m) for m in linear.children()] == [nn.Flatten, nn.Linear]


def test_cnn_shapes() -> None:
    model = build_model(CNN, seed=0)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [
        (1, 4, (3, 3), (1, 1)),
        (4, 8, (3, 3), (1, 1)),
    ]
    fcs = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(f.in_features, f.out_features) for f in fcs] == [(8 * 2 * 2, 16), (16, 10)]


def _states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("spec", [MLP, CNN], ids=["mlp", "cnn"])
def test_build_model_is_reproducible_and_keeps_global_rng(spec: ModelSpec) -> None:
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    first = build_model(spec, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    second = build_model(spec, seed=7)
    other = build_model(spec, seed=8)
    assert torch.equal(torch.get_rng_state(), state)
    assert _states_equal(first, second)
    assert not _states_equal(first, other)


def test_model_spec_config_round_trip() -> None:
    config = CNN.to_config()
    assert config == {"name": "cnn", "config": dict(CNN.config)}
    assert ModelSpec.from_config(config) == CNN
    assert ModelSpec.from_config({"name": "mlp"}) == ModelSpec("mlp")
    assert pickle.loads(pickle.dumps(CNN)) == CNN  # travels to spawned workers
    config["config"]["channels"].append(99)  # to_config hands out a copy
    assert CNN.config["channels"] == [4, 8]


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ([("name", "mlp")], "mapping"),
        ({"config": {}}, "'name'"),
        ({"name": "mlp", "extra": 1}, "'extra'"),
        ({"name": 3}, "string"),
        ({"name": "mlp", "config": [1]}, "mapping"),
        ({"name": "mlp", "config": {"f": object()}}, "JSON"),
        ({"name": "mlp", "config": {"f": float("nan")}}, "finite"),
        ({"name": "mlp", "config": {1: 2}}, "non-string key"),
    ],
)
def test_model_spec_from_config_is_strict(config: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        ModelSpec.from_config(config)


def _mlp(**change: Any) -> dict[str, Any]:
    config: dict[str, Any] = {"in_features": 4, "hidden": [8], "out_features": 2}
    config.update(change)
    return {k: v for k, v in config.items() if v is not None}


def _cnn(**change: Any) -> dict[str, Any]:
    config: dict[str, Any] = dict(CNN.config)
    config.update(change)
    return {k: v for k, v in config.items() if v is not None}


@pytest.mark.parametrize(
    ("name", "config", "match"),
    [
        ("mlp", _mlp(in_features=None), "'in_features'"),
        ("mlp", _mlp(in_features=0), "'in_features'"),
        ("mlp", _mlp(in_features=4.0), "'in_features'"),
        ("mlp", _mlp(in_features=True), "'in_features'"),
        ("mlp", _mlp(hidden=8), "'hidden'"),
        ("mlp", _mlp(hidden=[8, -1]), r"'hidden\[1\]'"),
        ("mlp", _mlp(out_features="2"), "'out_features'"),
        ("mlp", _mlp(dropout=1.0), "'dropout'"),
        ("mlp", _mlp(dropout=-0.1), "'dropout'"),
        ("mlp", _mlp(hiden=[8]), "'hiden'"),
        ("cnn", _cnn(channels=[]), "'channels'"),
        ("cnn", _cnn(image_size=3), "'image_size'"),
        ("cnn", _cnn(hidden=0), "'hidden'"),
        ("cnn", _cnn(in_channels=None), "'in_channels'"),
        ("cnn", _cnn(kernel=5), "'kernel'"),
    ],
)
def test_invalid_model_configs(name: str, config: Mapping[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model(ModelSpec(name, config))


def test_unknown_model_and_bad_seed() -> None:
    with pytest.raises(UnknownNameError, match=r"registered: .*mlp"):
        build_model(ModelSpec("resnet9000"))
    with pytest.raises(UnknownNameError):
        build_model(ModelSpec("os.system"))
    with pytest.raises(ConfigError, match="seed"):
        build_model(MLP, seed=-1)
    with pytest.raises(ConfigError, match="seed"):
        build_model(MLP, seed=True)


def test_factory_must_return_a_module(monkeypatch: pytest.MonkeyPatch) -> None:
    name = "test-not-a-module"  # registered for this test only (undone by monkeypatch)
    monkeypatch.setitem(MODELS._entries, name, lambda config: "not a module")
    with pytest.raises(ConfigError, match=r"not a torch\.nn\.Module"):
        build_model(ModelSpec(name))


def test_state_round_trip_through_aggregation_dtypes() -> None:
    model = build_model(CNN, seed=3)
    arrays: dict[str, Array] = state_to_arrays(model)
    assert all(a.dtype == np.float32 for a in arrays.values())
    halved = {k: (v / 2).astype(v.dtype) for k, v in arrays.items()}
    load_arrays(model, halved)
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), halved[key])
