"""Seeding torch's global generator from several threads at once."""

from __future__ import annotations

import threading

import numpy as np
import torch

from fedloom.algorithms.ml import ModelSpec, build_model, state_to_arrays
from fedloom.algorithms.ml._rng import seeded

SPEC = ModelSpec("mlp", {"in_features": 32, "hidden": [64, 64], "out_features": 10})


def test_seeded_models_are_the_same_while_other_threads_build_and_draw_seeded() -> None:
    expected = state_to_arrays(build_model(SPEC, seed=7))
    results: list[dict[str, np.ndarray]] = []
    stop = threading.Event()

    def build() -> None:
        for _ in range(20):
            results.append(state_to_arrays(build_model(SPEC, seed=7)))

    def draw() -> None:  # another short block that needs its own seeded draws
        while not stop.is_set():
            with seeded(1, torch.device("cpu"), exclusive=True):
                assert torch.equal(torch.rand(256), reference)

    with seeded(1, torch.device("cpu")):
        reference = torch.rand(256)

    builders = [threading.Thread(target=build) for _ in range(3)]
    drawer = threading.Thread(target=draw)
    drawer.start()
    for thread in builders:
        thread.start()
    for thread in builders:
        thread.join()
    stop.set()
    drawer.join()
    assert len(results) == 60
    for result in results:
        for key, value in expected.items():
            assert np.array_equal(result[key], value), key


def test_seeded_restores_the_global_generator() -> None:
    before = torch.get_rng_state()
    with seeded(3, torch.device("cpu")):
        first = torch.rand(4)
    with seeded(3, torch.device("cpu"), exclusive=True):
        again = torch.rand(4)
    assert torch.equal(first, again)
    assert torch.equal(torch.get_rng_state(), before)
