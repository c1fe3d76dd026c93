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
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedloom._events import MODELLER, EventCallback, EventKind, EventStream, Subscription
from fedloom._events import virtual_client as client_name
from fedloom._registry import import_plugins
from fedloom.algorithms.ml import (
    ModelSpec,
    build_model,
    flat_metrics,
    load_arrays,
    weighted_metrics,
)
from fedloom.errors import ConfigError, SimulationError
from fedloom.privacy import FoldContext, TransformChain
from fedloom.scheduler import ResourceEstimate, ResourceLedger
from fedloom.simulation._backend import Backend, BackendPlan, ClientResult, worker_devices
from fedloom.simulation._client import ClientJob, participant
from fedloom.simulation._fold import FoldBuffers
from fedloom.simulation._report import RoundReport
from fedloom.simulation._round import RoundRules, run_round
from fedloom.simulation._settings import SimulationConfig
from fedloom.simulation._shm import FlatLayout
from fedloom.simulation._startup import (
    _forks,
    _Initialiser,
    _ledger,
    _num_clients,
    _shapes,
    make_backend,
)
from fedloom.strategies import Strategy

__all__ = ["Simulation", "SimulationResult"]


@dataclass(frozen=True)
class SimulationResult:
    """Final global parameters, one report per round, and timings."""

    model_spec: ModelSpec
    parameters: dict[str, np.ndarray]
    rounds: list[RoundReport]
    startup_seconds: float
    stopped: bool = False

    def model(self) -> torch.nn.Module:
        """A torch module with the final global parameters."""
        module = build_model(self.model_spec)
        load_arrays(module, self.parameters)
        return module

    @property
    def round_seconds(self) -> list[float]:
        """Each round's wall seconds, in order."""
        return [report.seconds for report in self.rounds]

    def write_reports(self, folder: Path) -> list[Path]:
        """One JSON report per round (the round is the task group)."""
        return [report.write(folder) for report in self.rounds]


class Simulation:
    """Runs a :class:`SimulationConfig` on a backend (see the module docstring).

    Progress is published on ``events`` (a new :class:`~fedloom._events.EventStream` unless
    one is given, e.g. to share it with a dashboard) as events of task :attr:`task_id`:
    TASK_STARTED once the workers are ready, ROUND_STARTED, a PARTICIPANT_DONE per
    virtual client, ROUND_FINISHED, then TASK_FINISHED (or TASK_ABORTED when the run
    raises); see :class:`~fedloom._events.EventKind` for their fields. Subscribers run on
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
