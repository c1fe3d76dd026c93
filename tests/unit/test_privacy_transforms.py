"""The privacy seam: the transform registry, clip's arithmetic, the chain, and its wiring."""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pytest
import torch

from fedloom import FedAvg, ModelSpec, TrainingConfig
from fedloom.errors import ConfigError, DataError
from fedloom.privacy import (
    ClipTransform,
    FoldContext,
    ReleaseContext,
    TransformChain,
    TransformSpec,
    UpdateTransform,
    get_transform,
    register_transform,
    update_norm,
)
from fedloom.simulation import DataSpec
from fedloom.simulation._client import ClientJob, ClientRunner, RunnerPlan
from fedloom.simulation._shm import FlatLayout

Array = npt.NDArray[Any]
CONTEXT = ReleaseContext(seed=3, participant="pod-a", round_index=1)
MLP = ModelSpec("mlp", {"in_features": 4, "hidden": [3], "out_features": 2})
CLIP = TransformSpec("clip", {"max_norm": 0.05})


# --- the registry ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("blur", {}, r"unknown privacy transform 'blur'; known: clip"),
        (3, {}, r"unknown privacy transform 3"),
        ("clip", [1.0], r"privacy transform 'clip' args must be a mapping"),
        ("clip", {"max_norm": 1, "norm": 2}, r"privacy transform 'clip' has no args \['norm'\]"),
        ("clip", {}, r"privacy transform 'clip': .*max_norm"),
        ("clip", {"max_norm": 0}, r"max_norm must be a finite number > 0, got 0"),
        ("clip", {"max_norm": -1.0}, r"max_norm must be a finite number > 0, got -1.0"),
        ("clip", {"max_norm": math.inf}, r"max_norm must be a finite number > 0, got inf"),
        ("clip", {"max_norm": math.nan}, r"max_norm must be a finite number > 0, got nan"),
        ("clip", {"max_norm": True}, r"max_norm must be a finite number > 0, got True"),
        ("clip", {"max_norm": "1"}, r"max_norm must be a finite number > 0, got '1'"),
    ],
)
def test_a_bad_transform_is_a_one_line_config_error(name: Any, args: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        get_transform(name, args)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"name": "clip"}, r"privacy must be a list"),
        ([{"max_norm": 1}], r"privacy\[0\]: privacy transform must be a name or"),
        ([{"name": "clip", "args": 1}], r"privacy\[0\]: privacy transform 'clip' args must be"),
        ([CLIP.to_config(), "blur"], r"privacy\[1\]: unknown privacy transform 'blur'"),
    ],
)
def test_a_bad_transform_list_names_the_entry(config: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TransformSpec.list_from_config(config)


def test_specs_read_back_what_they_write() -> None:
    specs = TransformSpec.list_from_config(
        [CLIP.to_config(), {"name": "clip", "args": {"max_norm": 2}}]
    )
    assert specs == (CLIP, TransformSpec("clip", {"max_norm": 2}))
    assert get_transform("clip", {"max_norm": 2}).to_args() == {"max_norm": 2}


def test_a_name_is_registered_once() -> None:
    @dataclass(frozen=True)
    class Impostor(UpdateTransform):
        name: ClassVar[str] = "clip"

    with pytest.raises(ConfigError, match=r"privacy transform 'clip' is registered already"):
        register_transform(Impostor)
    assert type(get_transform("clip", {"max_norm": 1})) is ClipTransform


# --- clip, by hand -----------------------------------------------------------------------


def _update() -> tuple[dict[str, Array], dict[str, Array]]:
    """A change of (3, 4) over two float arrays (norm 5) and a count that moved by 4."""
    start = {
        "a": np.array([1.0], dtype=np.float32),
        "b": np.array([[2.0]], dtype=np.float64),
        "count": np.array(3, dtype=np.int64),
    }
    update = {
        "a": np.array([4.0], dtype=np.float32),
        "b": np.array([[6.0]], dtype=np.float64),
        "count": np.array(7, dtype=np.int64),
    }
    return update, start


def test_clip_scales_a_long_change_to_max_norm_in_place() -> None:
    update, start = _update()
    arrays = dict(update)
    assert update_norm(update, start) == 5.0  # the count is not measured
    released = ClipTransform(max_norm=1.0).release(update, start, CONTEXT)
    assert released is update
    assert all(released[key] is arrays[key] for key in arrays)  # in place: no new arrays
    # change x 1/5 added back to the start, rounded once to each dtype
    assert released["a"].tolist() == [np.float32(1.0 + 3.0 * 0.2)]
    assert released["a"].dtype == np.float32
    assert released["b"].tolist() == [[2.0 + 4.0 * 0.2]]
    assert int(released["count"]) == 7  # counts are left as they are
    assert update_norm(released, start) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("max_norm", [5.0, 10.0])
def test_clip_leaves_a_short_change_bit_for_bit(max_norm: float) -> None:
    update, start = _update()
    expected = {key: array.copy() for key, array in update.items()}
    released = ClipTransform(max_norm=max_norm).release(update, start, CONTEXT)
    for key, array in expected.items():
        assert released[key].tobytes() == array.tobytes()


def test_clip_releases_a_non_finite_update_as_it_is() -> None:
    update, start = _update()
    update["a"][0] = np.nan
    released = ClipTransform(max_norm=1.0).release(update, start, CONTEXT)
    assert math.isnan(released["a"][0]) and released["b"].tolist() == [[6.0]]


def test_clip_refuses_an_update_the_global_model_does_not_match() -> None:
    update, start = _update()
    with pytest.raises(DataError, match=r"clip: update 'a' has shape \[1\], the global .*\[2\]"):
        ClipTransform(max_norm=1.0).release(update, start | {"a": np.zeros(2)}, CONTEXT)
    with pytest.raises(DataError, match=r"clip: update 'b' .* holds nothing there"):
        ClipTransform(max_norm=1.0).release(update, {"a": start["a"]}, CONTEXT)


# --- the chain ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Logged(UpdateTransform):
    """Adds ``step`` to every float array on release, subtracts it on unfold; logs both."""

    name: ClassVar[str] = "logged"  # never registered: a chain takes any instance
    unfolds: ClassVar[bool] = True
    step: float
    log: list[tuple[str, float, int]]

    def release(
        self,
        update: MutableMapping[str, Array],
        global_arrays: Mapping[str, Array],
        context: ReleaseContext,
    ) -> MutableMapping[str, Array]:
        self.log.append(("release", self.step, context.position))
        return {  # new arrays
            key: array + self.step if array.dtype.kind == "f" else array
            for key, array in update.items()
        }

    def unfold(self, aggregate: MutableMapping[str, Array], context: FoldContext) -> None:
        self.log.append(("unfold", self.step, context.position))
        for array in aggregate.values():
            np.subtract(array, self.step, out=array)


def test_the_chain_releases_in_order_and_unfolds_in_reverse() -> None:
    log: list[tuple[str, float, int]] = []
    chain = TransformChain([_Logged(1.0, log), ClipTransform(max_norm=1.0), _Logged(10.0, log)])
    update, start = _update()
    released = chain.release(update, start, CONTEXT)
    # +1 makes the change (4, 5); clipped to norm 1 that is (4, 5) / sqrt(41); then +10
    assert released["b"][0, 0] == pytest.approx(2.0 + 5.0 / math.sqrt(41) + 10.0)
    aggregate = {"b": released["b"].copy()}
    chain.unfold(aggregate, FoldContext(3, 1, ("pod-a",), 1.0))
    assert aggregate["b"][0, 0] == pytest.approx(2.0 + 5.0 / math.sqrt(41) - 1.0)
    assert log == [
        ("release", 1.0, 0),
        ("release", 10.0, 2),
        ("unfold", 10.0, 2),
        ("unfold", 1.0, 0),
    ]
    assert chain.needs_global and chain.unfolds


def test_clip_and_the_empty_chain_leave_the_fold_alone() -> None:
    assert not TransformChain() and not TransformChain().unfolds
    chain = TransformChain.of([CLIP])
    assert chain and chain.needs_global and not chain.unfolds
    aggregate = {"w": np.array([1.5, -2.0], dtype=np.float32)}
    chain.unfold(aggregate, FoldContext(0, 0, ("pod-a",), 1.0))
    ClipTransform(max_norm=1.0).unfold(aggregate, FoldContext(0, 0, ("pod-a",), 1.0))
    assert aggregate["w"].tolist() == [1.5, -2.0]


def test_a_context_draws_the_same_numbers_everywhere_and_new_ones_per_place() -> None:
    first = CONTEXT.generator().random(3)
    assert first.tolist() == ReleaseContext(3, "pod-a", 1).generator().random(3).tolist()
    for other in (
        ReleaseContext(3, "pod-a", 1, position=1),
        ReleaseContext(3, "pod-b", 1),
        ReleaseContext(3, "pod-a", 2),
    ):
        assert other.generator().random(3).tolist() != first.tolist()


# --- the wiring --------------------------------------------------------------------------


def test_fedavg_keeps_privacy_out_of_its_config_unless_it_has_some() -> None:
    plain = FedAvg(model=MLP)
    assert "privacy" not in plain.to_config()
    clipped = FedAvg(model=MLP, privacy=[CLIP])  # type: ignore[arg-type]
    assert clipped.privacy == (CLIP,)
    assert clipped.to_config()["privacy"] == [CLIP.to_config()]
    assert FedAvg.from_config(clipped.to_config()) == clipped


def test_fedavg_names_a_bad_privacy_entry() -> None:
    config = FedAvg(model=MLP).to_config() | {"privacy": [{"name": "blur"}]}
    with pytest.raises(ConfigError, match=r"^fedavg\.privacy\[0\]: unknown privacy transform"):
        FedAvg.from_config(config)
    with pytest.raises(ConfigError, match=r"fedavg privacy must be a list of TransformSpec"):
        FedAvg(model=MLP, privacy=({"name": "clip"},))  # type: ignore[arg-type]


def _runner(privacy: tuple[TransformSpec, ...]) -> ClientRunner:
    data = DataSpec("synthetic", {"clients": 2, "samples": 12, "shape": [4], "classes": 2})
    training = TrainingConfig(epochs=2, batch_size=4, learning_rate=0.5)
    plan = RunnerPlan(MLP, data, training, seed=1, privacy=privacy)
    assert RunnerPlan.from_config(plan.to_config()) == plan
    return ClientRunner(plan)


def _fit(runner: ClientRunner, start: Mapping[str, torch.Tensor]) -> dict[str, Array]:
    layout = FlatLayout.of(start)
    slot = layout.zeros()
    global_flats = layout.zeros()
    layout.pack({k: v.numpy() for k, v in start.items()}, global_flats)
    runner.fit(ClientJob(0, 0), layout.views(slot), start=layout.views(global_flats))
    return layout.unpack(slot)


def test_the_client_runner_clips_the_update_in_its_slot() -> None:
    start = {k: v.detach().clone() for k, v in _runner(()).model.state_dict().items()}
    plain = _fit(_runner(()), start)
    clipped = _fit(_runner((CLIP,)), start)
    global_arrays = {k: v.numpy() for k, v in start.items()}
    assert update_norm(plain, global_arrays) > 0.05  # the clip binds
    # the very arrays a pod would send: its trained update, clipped the same way
    expected = ClipTransform(max_norm=0.05).release(plain, global_arrays, CONTEXT)
    for key, array in expected.items():
        assert clipped[key].tobytes() == array.tobytes(), key
