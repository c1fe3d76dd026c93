"""The simulation engine: federated training of many virtual clients on one machine (or Ray).

Each round the engine samples clients, writes the global parameters once for the
backend's workers, queues one job per client, and folds the updates as they arrive into
a streaming float64 sum in the order of the participants' names (:class:`OrderedFold`),
so the result is bit-identical for any number of workers and any order of completion,
and equal to what pods named ``client-<i>`` give. Memory on the engine's side is
O(model). The round is the config's :class:`~fedloom.strategies.Strategy` (default
``fedavg``), the very object the pods' FedAvg protocol drives: its client hook runs in
the workers, its weights and server step here.

With a :class:`ClientResources` estimate, jobs are admitted through a
:class:`~fedloom.scheduler.ResourceLedger` (system memory, CPUs, device memory) and placed
on the device it chooses; a job that runs out of memory is INTERRUPTed, its estimate
raised, and re-queued.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedloom.algorithms.ml import (
    ModelSpec,
    TrainingConfig,
    build_model,
    flat_metrics,
    load_arrays,
    weighted_metrics,
)
from fedloom.errors import ConfigError, SimulationError, UnknownNameError
from fedloom.events import MODELLER, EventCallback, EventKind, EventStream, Subscription
from fedloom.events import virtual_client as client_name
from fedloom.privacy import FoldContext, TransformChain, TransformSpec, check_specs
from fedloom.registry import import_plugins
from fedloom.scheduler import (
    ResourceBudget,
    ResourceEstimate,
    ResourceLedger,
    check_retry_rules,
)
from fedloom.simulation.backend import (
    START_METHODS,
    Backend,
    BackendPlan,
    ClientResult,
    worker_devices,
)
from fedloom.simulation.client import ClientJob, RunnerPlan, participant, with_overrides
from fedloom.simulation.data import DataSpec
from fedloom.simulation.fold import FoldBuffers
from fedloom.simulation.report import RoundReport
from fedloom.simulation.round import RoundRules, run_round
from fedloom.simulation.sampling import Sampling
from fedloom.simulation.shm import FlatLayout
from fedloom.strategies import Strategy, StrategySpec

__all__ = [
    "BACKENDS",
    "ClientResources",
    "Simulation",
    "SimulationConfig",
    "SimulationResult",
]

logger = logging.getLogger(__name__)

BACKENDS = ("process", "thread", "ray")


@dataclass(frozen=True)
class ClientResources:
    """What one client's round needs, for admission (and for Ray's placement)."""

    estimate: ResourceEstimate = field(default_factory=ResourceEstimate)
    budget: ResourceBudget | None = None
    max_retries: int = 3
    growth: float = 1.5

    def __post_init__(self) -> None:
        if not isinstance(self.estimate, ResourceEstimate):
            raise ConfigError(
                f"resources estimate must be a ResourceEstimate, got {self.estimate!r}"
            )
        if self.budget is not None and not isinstance(self.budget, ResourceBudget):
            raise ConfigError(f"resources budget must be a ResourceBudget, got {self.budget!r}")
        check_retry_rules(self.max_retries, self.growth)


@dataclass(frozen=True)
class SimulationConfig:
    """A simulation: model, client data, rounds, sampling, training, strategy, workers."""

    model: ModelSpec
    data: DataSpec
    rounds: int = 3
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sampling: Sampling = field(default_factory=Sampling)
    seed: int = 0
    validation_fraction: float = 0.0
    num_parallels: int = 2
    backend: str = "process"
    device: str = "cpu"
    device_count: int = 1
    client_overrides: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    resources: ClientResources | None = None
    round_timeout: float | None = None
    torch_threads: int = 1
    plugins: tuple[str, ...] = ()
    start_method: str = "auto"
    strategy: StrategySpec = field(default_factory=StrategySpec)
    privacy: tuple[TransformSpec, ...] = ()

    def __post_init__(self) -> None:
        for name in ("rounds", "num_parallels", "device_count", "torch_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"simulation {name} must be an int >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"simulation seed must be an int >= 0, got {self.seed!r}")
        _check_types(self)
        if self.backend not in BACKENDS:
            raise ConfigError(
                f"unknown simulation backend {self.backend!r}; known: {', '.join(BACKENDS)}"
            )
        if not 0.0 <= self.validation_fraction < 0.9:
            raise ConfigError(
                f"validation_fraction must be in [0, 0.9), got {self.validation_fraction}"
            )
        if self.device != "cpu" and not self.device.startswith("cuda"):
            raise ConfigError(f"device must be 'cpu' or 'cuda[:N]', got {self.device!r}")
        if self.start_method not in START_METHODS:
            raise ConfigError(
                f"start_method must be one of {', '.join(START_METHODS)}, got {self.start_method!r}"
            )
        if self.round_timeout is not None and not (
            _is_number(self.round_timeout) and 0 < self.round_timeout < math.inf
        ):
            raise ConfigError(
                f"round_timeout must be a number of seconds > 0, got {self.round_timeout!r}"
            )

    def runner_plan(self) -> RunnerPlan:
        return RunnerPlan(
            model=self.model,
            data=self.data,
            training=self.training,
            seed=self.seed,
            validation_fraction=self.validation_fraction,
            torch_threads=self.torch_threads,
            plugins=self.plugins,
            strategy=self.strategy,
            privacy=self.privacy,
        )


@dataclass(frozen=True)
class SimulationResult:
    """Final global parameters, one report per round, and timings."""

    model_spec: ModelSpec
    parameters: dict[str, np.ndarray]
    rounds: list[RoundReport]
    startup_seconds: float
    stopped: bool = False

    def model(self) -> torch.nn.Module:
        module = build_model(self.model_spec)
        load_arrays(module, self.parameters)
        return module

    @property
    def round_seconds(self) -> list[float]:
        return [report.seconds for report in self.rounds]

    def write_reports(self, folder: Path) -> list[Path]:
        """One JSON report per round (the round is the task group)."""
        return [report.write(folder) for report in self.rounds]


class Simulation:
    """Runs a :class:`SimulationConfig` on a backend (see the module docstring).

    Progress is published on ``events`` (a new :class:`~fedloom.events.EventStream` unless
    one is given, e.g. to share it with a dashboard) as events of task :attr:`task_id`:
    TASK_STARTED once the workers are ready, ROUND_STARTED, a PARTICIPANT_DONE per
    virtual client, ROUND_FINISHED, then TASK_FINISHED (or TASK_ABORTED when the run
    raises); see :class:`~fedloom.events.EventKind` for their fields. Subscribers run on
    the engine's thread, between the folds of a round: they must return promptly.
    """

    def __init__(
        self,
        config: SimulationConfig,
        *,
        backend: Backend | None = None,
        events: EventStream | None = None,
    ) -> None:
        self.config = config
        self._backend = backend if backend is not None else make_backend(config)
        self.events = events if events is not None else EventStream()
        self.task_id = uuid.uuid4().hex
        """The task id of this run's events."""
        self._stop = threading.Event()
        self._num_clients = 0
        self._ran = False
        self._buffers: FoldBuffers | None = None
        self._strategy: Strategy = config.strategy.build()
        self._privacy = TransformChain.of(config.privacy)
        self._state: dict[str, np.ndarray] = {}
        self._previous: dict[str, torch.Tensor] | None = None
        self._ledger: ResourceLedger | None = None

    @property
    def backend(self) -> Backend:
        """The backend the clients run on (e.g. its ``start_method`` once started)."""
        return self._backend

    def subscribe(self, callback: EventCallback) -> Subscription:
        """Deliver this simulation's events to ``callback`` (see :meth:`EventStream.subscribe`)."""
        return self.events.subscribe(callback)

    def stop(self) -> None:
        """Stop promptly (from any thread): running clients are interrupted."""
        self._stop.set()
        self._backend.stop()

    def run(self) -> SimulationResult:
        """Run every round (or until :meth:`stop`); the workers are closed afterwards.

        Raises:
            SimulationError: workers could not start, no client of a round produced an
                update (the error lists their failures), or this simulation already ran.
        """
        if self._ran:
            raise SimulationError("a Simulation runs once: its workers are closed; make a new one")
        self._ran = True
        began = time.perf_counter()
        config = self.config
        try:
            import_plugins(config.plugins)
        except ImportError as exc:
            raise ConfigError(f"cannot import simulation plugin: {exc}") from exc
        self._num_clients = _num_clients(config)
        # shapes only (no memory, no init kernels): the workers can start right away
        layout = FlatLayout.of(_shapes(config.model))
        flats = layout.zeros()
        devices = worker_devices(config.device, config.device_count, config.num_parallels)
        plan = BackendPlan(config.runner_plan(), layout, tuple(devices))
        self._ledger = _ledger(config, devices)
        # the initial weights are drawn while the workers start, unless they are forked: a
        # forked child would inherit the locks a half-done build holds in another thread
        initial = _Initialiser(config, layout, flats, threaded=not _forks(self._backend, plan))
        # the workers have the cores: folds on more torch threads would spin against them
        engine_threads = torch.get_num_threads()
        if config.backend != "thread":
            torch.set_num_threads(1)
        # what exists now (torch's many objects included) is kept out of the collector's
        # full passes for the run: one such pass costs ~90 ms in the middle of a round
        gc.freeze()
        try:
            self._backend.start(plan)
            initial.wait()
            self._buffers = FoldBuffers.like(flats)
            if self._strategy.steps_on_server:
                self._previous = layout.zeros()
                self._state = self._strategy.initial_state(layout.unpack(flats))
            startup = time.perf_counter() - began
            self._emit(
                EventKind.TASK_STARTED,
                rounds=config.rounds,
                clients=self._num_clients,
                startup_seconds=startup,
            )
            reports: list[RoundReport] = []
            for round_index in range(config.rounds):
                if self._stop.is_set():
                    break
                report = self._round(round_index, flats, layout)
                reports.append(report)
                if report.stopped:
                    break
            # within the run (the engine's thread settings), as every other event
            finished = [r for r in reports if not r.stopped]
            self._emit(EventKind.TASK_FINISHED, rounds=len(finished), stopped=self._stop.is_set())
        except Exception as exc:
            self._emit(EventKind.TASK_ABORTED, reason=type(exc).__name__, message=str(exc))
            raise
        finally:
            self._backend.close()
            gc.unfreeze()
            torch.set_num_threads(engine_threads)
        return SimulationResult(
            model_spec=config.model,
            parameters=layout.unpack(flats),
            rounds=finished,
            startup_seconds=startup,
            stopped=self._stop.is_set(),
        )

    # --- one round ----------------------------------------------------------------------

    def _round(
        self, round_index: int, flats: dict[str, torch.Tensor], layout: FlatLayout
    ) -> RoundReport:
        config = self.config
        strategy = self._strategy
        sampled = config.sampling.clients(round_index, self._num_clients, config.seed)
        # the pods' fold order (by participant name), which is then the admission order
        clients = sorted(sampled, key=participant)
        jobs = {
            c: ClientJob(
                c,
                round_index,
                dict(config.client_overrides.get(c, {})),
                values=strategy.participant_values(round_index, participant(c)),
            )
            for c in clients
        }
        if self._previous is not None:
            for name, flat in self._previous.items():
                flat.copy_(flats[name])
        self._emit(EventKind.ROUND_STARTED, round=round_index, clients=len(clients))
        resources = config.resources
        rules = RoundRules(
            estimate=resources.estimate if resources else ResourceEstimate(),
            max_oom_retries=resources.max_retries if resources else 3,
            growth=resources.growth if resources else 1.5,
            timeout=config.round_timeout,
        )

        def on_client(done: int, total: int, result: ClientResult) -> None:
            client = result.job.client
            self.events.publish(
                self.task_id,
                client_name(client),
                EventKind.PARTICIPANT_DONE,
                {
                    "round": round_index,
                    "client": client,
                    "done": done,
                    "total": total,
                    "metrics": result.outcome.train if result.outcome is not None else {},
                },
            )

        report = run_round(
            round_index,
            clients,
            jobs,
            flats,
            backend=self._backend,
            rules=rules,
            ledger=self._ledger,
            stop=self._stop,
            on_client=on_client,
            buffers=self._buffers,
            strategy=strategy,
        )
        if not report.stopped and self._privacy.unfolds:
            self._privacy.unfold(
                _arrays(layout.views(flats)), _fold_context(config.seed, report, strategy)
            )
        if not report.stopped and self._previous is not None:
            following, self._state = strategy.server_step(
                _arrays(layout.views(self._previous)), _arrays(layout.views(flats)), self._state
            )
            layout.pack(following, flats)
        if not report.stopped:
            report.metrics = weighted_metrics(
                flat_metrics(r.outcome.num_samples, r.outcome.train, r.outcome.validation)
                for r in report.clients
                if r.outcome is not None
            )
            self._emit(EventKind.ROUND_FINISHED, round=round_index, metrics=report.metrics)
        return report

    def _emit(self, kind: EventKind, **fields: Any) -> None:
        self.events.publish(self.task_id, MODELLER, kind, fields)


def _arrays(views: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """Numpy views of CPU tensors (no copies)."""
    return {key: view.numpy() for key, view in views.items()}


def _fold_context(seed: int, report: RoundReport, strategy: Strategy) -> FoldContext:
    """The round's folded clients, as the pods' FedAvg names and weighs them."""
    total, folded = 0.0, []
    for record in report.clients:  # in fold order: the kernel's total weight, bit for bit
        if record.outcome is not None:
            total += strategy.fold_weight(record.outcome.num_samples, record.outcome.aux)
            folded.append(participant(record.client))
    return FoldContext(seed, report.round, tuple(sorted(folded)), total)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_FIELD_TYPES: tuple[tuple[str, type | tuple[type, ...]], ...] = (
    ("model", ModelSpec),
    ("data", DataSpec),
    ("training", TrainingConfig),
    ("sampling", Sampling),
    ("resources", (ClientResources, type(None))),
    ("backend", str),
    ("device", str),
    ("start_method", str),
    ("client_overrides", Mapping),
    ("plugins", (tuple, list)),
    ("strategy", StrategySpec),
)


def _check_types(config: SimulationConfig) -> None:
    """Wrong types are ConfigErrors here, not AttributeErrors deep inside a run."""
    for name, kind in _FIELD_TYPES:
        value = getattr(config, name)
        if not isinstance(value, kind):
            raise ConfigError(f"simulation {name} has the wrong type: {value!r}")
    config.strategy.build()
    object.__setattr__(config, "privacy", check_specs("simulation", config.privacy))
    if not all(isinstance(module, str) for module in config.plugins):
        raise ConfigError(f"simulation plugins must be module names, got {config.plugins!r}")
    object.__setattr__(config, "plugins", tuple(config.plugins))  # frozen: stays hashable
    for client, overrides in config.client_overrides.items():
        if isinstance(client, bool) or not isinstance(client, int) or client < 0:
            raise ConfigError(f"client overrides are keyed by client number, got {client!r}")
        if not isinstance(overrides, Mapping):
            raise ConfigError(f"client {client}'s overrides must be a mapping, got {overrides!r}")
        try:
            with_overrides(config.training, overrides)
        except ConfigError as exc:
            raise ConfigError(f"client {client}'s overrides: {exc}") from exc
    if not _is_number(config.validation_fraction):
        raise ConfigError(
            f"validation_fraction must be a number, got {config.validation_fraction!r}"
        )


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
        from fedloom.simulation.threads import ThreadPoolBackend

        return ThreadPoolBackend()
    if config.backend == "ray":
        from fedloom.simulation.ray_backend import RayBackend

        return RayBackend(address=ray_address, resources=config.resources)
    from fedloom.simulation.process_pool import ProcessPoolBackend

    return ProcessPoolBackend(start_method=config.start_method)


def _num_clients(config: SimulationConfig) -> int:
    from fedloom.simulation.data import build_client_data

    return build_client_data(config.data).num_clients
