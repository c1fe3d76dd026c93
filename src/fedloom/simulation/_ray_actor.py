"""The Ray actor of the Ray backend: one persistent worker in a Ray worker process.

It holds one :class:`~fedloom.simulation._client.ClientRunner` and one slot its model
trains in; :meth:`ClientActor.fit` never raises (failures are replies), so one client's
error never kills the actor. See :mod:`fedloom.simulation._ray_backend` for the driver.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from fedloom.errors import AbortReason, ConfigError
from fedloom.simulation._backend import ClientFailure, FailureKind
from fedloom.simulation._client import ClientJob, ClientRunner, RunnerPlan
from fedloom.simulation._shm import FlatLayout, all_finite
from fedloom.worker._allocator import keep_freed_memory
from fedloom.worker._threads import apply_thread_budget

__all__ = ["Array", "ClientActor", "Reply", "import_ray"]

Array = npt.NDArray[Any]
Reply = tuple[dict[str, Any], dict[str, Array] | None]


def import_ray() -> Any:
    """The ``ray`` module (typed ``Any``: Ray's own annotations are partial).

    Raises:
        ConfigError: Ray is not installed.
    """
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            "the Ray simulation backend needs Ray: install it with "
            "`pip install \"fedloom[ray]\"`, or choose backend='process'"
        ) from exc
    return ray


class _StopRequestedError(Exception):
    """ray.cancel was called on the running job."""


class ClientActor:
    """One worker: a ClientRunner and one slot the model trains in (see the module doc)."""

    def __init__(self, runner: Mapping[str, Any], groups: Sequence[Sequence[Any]], device: str):
        # a constructor that raises leaves only Ray's traceback text; an answer from
        # ready() carries the error type and message instead
        self._start_error: dict[str, Any] | None = None
        try:
            self._build(runner, groups, device)
        except Exception as exc:
            self._start_error = ClientFailure(
                FailureKind.ERROR, type(exc).__name__, ClientFailure.of(exc).message
            ).to_body()

    def _build(
        self, runner: Mapping[str, Any], groups: Sequence[Sequence[Any]], device: str
    ) -> None:
        ray = import_ray()
        keep_freed_memory()  # an actor is a worker process of its own: no faults per step
        plan = RunnerPlan.from_config(runner)
        apply_thread_budget(plan.torch_threads)
        if device.startswith("cuda") and ray.get_gpu_ids():
            device = "cuda:0"  # Ray narrowed CUDA_VISIBLE_DEVICES to the GPU it assigned
        self._runner = ClientRunner(plan, device=device)
        # the layout is rebuilt from the model rather than shipped: only JSON crosses Ray
        layout = FlatLayout.of(self._runner.model.state_dict())
        expected = tuple((str(name), int(count)) for name, count in groups)
        if layout.groups != expected:
            raise ConfigError(
                f"the worker's model packs into {layout.groups}, the engine's into {expected}"
            )
        self._slot = {name: np.zeros(count, dtype=np.dtype(name)) for name, count in expected}
        self._flats = {k: torch.from_numpy(v) for k, v in self._slot.items()}
        self._views = layout.views(self._flats)

    def ready(self) -> dict[str, Any]:
        if self._start_error is not None:
            return self._start_error
        context = import_ray().get_runtime_context()
        return {
            "device": self._runner.device_name,
            "pid": os.getpid(),
            "node": context.get_node_id(),
        }

    def assigned_resources(self) -> dict[str, float]:
        resources = import_ray().get_runtime_context().get_assigned_resources()
        return {str(k): float(v) for k, v in resources.items()}

    def fit(self, job_body: Mapping[str, Any], global_flats: Mapping[str, Array]) -> Reply:
        """Train one client from ``global_flats``; never raises (failures are replies).

        The returned arrays are the actor's slot: Ray copies them into the object store
        when this method returns, before the next job may overwrite the slot.
        """
        if self._start_error is not None:
            return self._start_error, None
        context = import_ray().get_runtime_context()

        def check_stop(_epoch: int, _batch: int, _loss: float) -> None:
            if context.is_canceled():
                raise _StopRequestedError

        try:
            job = ClientJob.from_body(job_body)
            check_stop(0, 0, 0.0)
            for name, flat in self._slot.items():
                np.copyto(flat, global_flats[name])
            outcome = self._runner.fit(job, self._views, on_batch=check_stop)
            if not all_finite(self._flats):
                return ClientFailure.non_finite().to_body(), None
            return {"outcome": outcome.to_body()}, self._slot
        except _StopRequestedError:
            return _failure(FailureKind.STOPPED, "Stopped", "stopped by ray.cancel"), None
        except Exception as exc:  # one client's failure is a reply, never a dead actor
            return ClientFailure.of(exc).to_body(), None


def _failure(kind: AbortReason, error_type: str, message: str) -> dict[str, Any]:
    return ClientFailure(kind, error_type, message).to_body()
