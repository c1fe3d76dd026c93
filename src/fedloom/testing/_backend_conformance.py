"""Conformance suite for the simulation :class:`~fedloom.simulation.Backend` contract.

Every backend (process pool, thread pool, Ray, or yours) must pass :func:`check_backend`.
The factory returns a fresh, unstarted backend; the suite starts it with a two-worker CPU
plan over tiny synthetic clients, runs jobs through it, and closes it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from fedloom.algorithms.ml import ModelSpec, TrainingConfig, build_model
from fedloom.errors import SimulationError
from fedloom.simulation import (
    Backend,
    BackendPlan,
    ClientJob,
    ClientResult,
    DataSpec,
    FailureKind,
    RunnerPlan,
)
from fedloom.simulation._shm import FlatLayout

__all__ = ["BackendFactory", "check_backend"]

BackendFactory = Callable[[], Backend]

_CLIENTS = 6
_TIMEOUT = 120.0
_PLAN = RunnerPlan(
    model=ModelSpec("mlp", {"in_features": 6, "hidden": [5], "out_features": 3}),
    data=DataSpec("synthetic", {"clients": _CLIENTS, "samples": 12, "shape": [6], "classes": 3}),
    training=TrainingConfig(batch_size=4, learning_rate=0.1),
    seed=1,
)


def check_backend(factory: BackendFactory) -> None:
    """Run every check on fresh backends from ``factory``; raise AssertionError on failure."""
    layout, start = _initial()
    plan = BackendPlan(_PLAN, layout, ("cpu", "cpu"))
    backend = factory()
    try:
        backend.start(plan)
        backend.start(plan)  # idempotent
        _nothing_queued_is_an_error(backend)
        backend.broadcast(start)
        first = _every_job_once(backend, layout, start)
        _same_job_same_update(backend, first)
        _failures_are_results(backend)
        _broadcast_changes_updates(backend, start, first)
        _stopped_jobs_end_stopped(backend)
    finally:
        backend.close()
    backend.close()  # idempotent


def _initial() -> tuple[FlatLayout, dict[str, torch.Tensor]]:
    state = build_model(_PLAN.model, seed=_PLAN.seed).state_dict()
    layout = FlatLayout.of(state)
    flats = layout.zeros()
    layout.pack({k: v.numpy() for k, v in state.items()}, flats)
    return layout, flats


def _next(backend: Backend) -> ClientResult:
    return backend.next_result(timeout=_TIMEOUT)


def _nothing_queued_is_an_error(backend: Backend) -> None:
    try:
        backend.next_result(timeout=1.0)
    except SimulationError:
        return
    raise AssertionError("next_result() with nothing queued must raise SimulationError")


def _copy(flats: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: flat.clone() for name, flat in flats.items()}


def _every_job_once(
    backend: Backend, layout: FlatLayout, start: Mapping[str, torch.Tensor]
) -> dict[int, dict[str, torch.Tensor]]:
    # three times as many jobs as a small pool has slots: slots must be released and reused
    jobs = [ClientJob(client % _CLIENTS, 0) for client in range(3 * _CLIENTS)]
    backend.submit(jobs[:_CLIENTS])
    seen: list[int] = []
    updates: dict[int, dict[str, torch.Tensor]] = {}
    submitted = _CLIENTS
    while len(seen) < len(jobs):
        result = _next(backend)
        assert result.failure is None, f"job {result.job} failed: {result.failure}"
        assert result.outcome is not None and result.flats is not None
        assert result.outcome.client == result.job.client and result.outcome.num_samples == 12
        assert set(result.flats) == {name for name, _ in layout.groups}
        for name, flat in result.flats.items():
            assert bool(torch.isfinite(flat).all()), "an update holds NaN/Inf"
            assert not torch.equal(flat, start[name]), "training changed nothing"
        updates.setdefault(result.job.client, _copy(result.flats))
        seen.append(result.job.client)
        backend.release(result)
        if submitted < len(jobs):
            backend.submit([jobs[submitted]])
            submitted += 1
    assert sorted(seen) == sorted(job.client for job in jobs), "a job was lost or repeated"
    return updates


def _same_job_same_update(backend: Backend, first: Mapping[int, Mapping[str, Any]]) -> None:
    backend.submit([ClientJob(2, 0)])
    result = _next(backend)
    assert result.flats is not None, result.failure
    for name, flat in result.flats.items():
        assert torch.equal(flat, first[2][name]), "the same job gave a different update"
    backend.release(result)


def _failures_are_results(backend: Backend) -> None:
    backend.submit([ClientJob(_CLIENTS + 5, 0), ClientJob(0, 0)])
    results = {r.job.client: r for r in (_next(backend), _next(backend))}
    broken = results[_CLIENTS + 5]
    assert broken.failure is not None and broken.failure.kind is FailureKind.ERROR
    assert broken.failure.error_type == "DataError", broken.failure
    assert results[0].failure is None, "a failed job must not break the next one"
    for result in results.values():
        backend.release(result)


def _broadcast_changes_updates(
    backend: Backend,
    start: Mapping[str, torch.Tensor],
    first: Mapping[int, Mapping[str, torch.Tensor]],
) -> None:
    backend.broadcast({name: flat + 0.5 for name, flat in start.items()})
    backend.submit([ClientJob(1, 0)])
    result = _next(backend)
    assert result.flats is not None, result.failure
    assert any(not torch.equal(flat, first[1][name]) for name, flat in result.flats.items()), (
        "a new broadcast did not reach the workers"
    )
    backend.release(result)


def _stopped_jobs_end_stopped(backend: Backend) -> None:
    backend.stop()
    backend.submit([ClientJob(c, 1) for c in range(3)])
    kinds = []
    for _ in range(3):
        result = _next(backend)
        kinds.append(result.failure.kind if result.failure else None)
        backend.release(result)
    assert kinds == [FailureKind.STOPPED] * 3, f"jobs after stop() ended {kinds}"
