"""A pod's task child computes with its thread budget: torch, OpenMP and BLAS alike."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import fedloom.testing._faults  # noqa: F401 - registers the "fault" protocol here
from fedloom import LocalFederation
from fedloom.pod import ArraySource, PodPolicy
from fedloom.testing._faults import Fault
from fedloom.worker import IsolationSettings

PLUGINS = ("fedloom.testing._faults",)


async def _facts(isolation: IsolationSettings, policy: PodPolicy) -> dict[str, Any]:
    pods = {"pod-a": ArraySource(np.zeros((20, 2), dtype=np.float32))}
    async with LocalFederation(
        pods, policy=policy, isolation=isolation, plugins=PLUGINS
    ) as federation:
        run = await federation.run(Fault("ok"))
    facts: dict[str, Any] = run.result["pod-a"]
    return facts


@pytest.mark.parametrize(
    ("isolation", "concurrent", "threads"),
    [
        (IsolationSettings(threads=1), 4, 1),  # explicit
        (IsolationSettings(cores=4), 2, 2),  # the pod's cores over its task slots
        (IsolationSettings(cores=4), 8, 1),  # never fewer than one
    ],
    ids=["threads", "cores-over-slots", "at-least-one"],
)
@pytest.mark.async_timeout(120)
async def test_the_child_computes_with_its_budget(
    isolation: IsolationSettings, concurrent: int, threads: int
) -> None:
    facts = await _facts(
        isolation, PodPolicy(allowed_modellers=None, max_concurrent_tasks=concurrent)
    )
    assert facts["torch_threads"] == threads
    assert facts["torch_interop_threads"] == threads
    assert facts["omp_num_threads"] == str(threads)
    assert facts["library_threads"] == [threads]  # every BLAS / OpenMP pool loaded
