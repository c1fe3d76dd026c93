"""What a simulation run starts with: its backend, its initial weights, its admission ledger.

:func:`make_backend` builds the backend a config names. The seeded initial model is
built while the workers start (:class:`_Initialiser`), unless the backend forks them
(:func:`_forks`): a forked child would inherit the locks a half-done build holds.
"""

from __future__ import annotations

import logging
import threading

import torch

from fedloom.algorithms.ml import ModelSpec, build_model
from fedloom.errors import ConfigError, UnknownNameError
from fedloom.scheduler import ResourceLedger
from fedloom.simulation._backend import Backend, BackendPlan
from fedloom.simulation._settings import SimulationConfig
from fedloom.simulation._shm import FlatLayout

__all__ = ["make_backend"]

logger = logging.getLogger(__name__)


def _ledger(config: SimulationConfig, devices: list[str]) -> ResourceLedger | None:
    """Admission over this machine, placing GPU work only on GPUs that have workers.

    None without resource estimates, and on Ray: Ray places clients by their actors'
    resources across the cluster, and a ledger of this machine would cap a cluster at the
    driver's size.
    """
    if config.resources is None or config.backend == "ray":
        return None
    gpus = sorted({device for device in devices if device != "cpu"})
    return ResourceLedger(config.resources.budget, gpus=gpus)


def _shapes(spec: ModelSpec) -> dict[str, torch.Tensor]:
    """The model's state as shapes only when it builds on the meta device, else real."""
    try:
        with torch.device("meta"):
            return build_model(spec).state_dict()
    except (ConfigError, UnknownNameError):
        raise
    except Exception:
        logger.debug("model %s does not build on the meta device", spec.name)
        return build_model(spec).state_dict()


class _Initialiser:
    """Builds the seeded initial model and packs it into ``flats`` (in a thread or now)."""

    def __init__(
        self,
        config: SimulationConfig,
        layout: FlatLayout,
        flats: dict[str, torch.Tensor],
        *,
        threaded: bool = True,
    ) -> None:
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if not threaded:
            self._run(config, layout, flats)
            return
        self._thread = threading.Thread(
            target=self._run, args=(config, layout, flats), name="fedloom-sim-init"
        )
        self._thread.start()

    def _run(
        self, config: SimulationConfig, layout: FlatLayout, flats: dict[str, torch.Tensor]
    ) -> None:
        try:
            state = build_model(config.model, seed=config.seed).state_dict()
            layout.pack({k: v.detach().cpu().numpy() for k, v in state.items()}, flats)
        except BaseException as exc:
            self._error = exc

    def wait(self) -> None:
        """Block until the weights are in ``flats``; re-raise what building them raised."""
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error


def _forks(backend: Backend, plan: BackendPlan) -> bool:
    """Whether ``backend`` will fork its workers for ``plan`` (only the process pool may)."""
    forks = getattr(backend, "forks", None)
    return bool(forks(plan)) if callable(forks) else False


def make_backend(config: SimulationConfig, *, ray_address: str | None = None) -> Backend:
    """The backend ``config.backend`` names, with default settings.

    Raises:
        ConfigError: the Ray backend without Ray installed.
    """
    if config.backend == "thread":
        from fedloom.simulation._threads import ThreadPoolBackend

        return ThreadPoolBackend()
    if config.backend == "ray":
        from fedloom.simulation._ray_backend import RayBackend

        return RayBackend(address=ray_address, resources=config.resources)
    from fedloom.simulation._process_pool import ProcessPoolBackend

    return ProcessPoolBackend(start_method=config.start_method)


def _num_clients(config: SimulationConfig) -> int:
    from fedloom.simulation._data import build_client_data

    return build_client_data(config.data).num_clients
