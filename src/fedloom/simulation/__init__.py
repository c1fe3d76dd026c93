"""Simulation: many virtual clients on one machine (process or thread pool) or on Ray.

The engine runs the pods' own round code (:func:`fedloom.algorithms.ml.local_round`) for
each virtual client, folds the updates in a fixed order into a streaming weighted sum
(bit-identical for any number of workers), and admits clients through the resource
scheduler when they declare estimates. See :class:`Simulation`.
"""

from fedloom.simulation.backend import (
    Backend,
    BackendPlan,
    ClientFailure,
    ClientResult,
    FailureKind,
)
from fedloom.simulation.client import ClientJob, ClientOutcome, ClientRunner, RunnerPlan
from fedloom.simulation.data import CLIENT_DATA, ClientData, DataSpec, build_client_data
from fedloom.simulation.engine import Simulation, SimulationResult
from fedloom.simulation.fold import OrderedFold
from fedloom.simulation.process_pool import ProcessPoolBackend
from fedloom.simulation.report import ClientRecord, RoundReport
from fedloom.simulation.sampling import Sampling
from fedloom.simulation.settings import BACKENDS, ClientResources, SimulationConfig
from fedloom.simulation.startup import make_backend
from fedloom.simulation.threads import ThreadPoolBackend

__all__ = [
    "BACKENDS",
    "CLIENT_DATA",
    "Backend",
    "BackendPlan",
    "ClientData",
    "ClientFailure",
    "ClientJob",
    "ClientOutcome",
    "ClientRecord",
    "ClientResources",
    "ClientResult",
    "ClientRunner",
    "DataSpec",
    "FailureKind",
    "OrderedFold",
    "ProcessPoolBackend",
    "RoundReport",
    "RunnerPlan",
    "Sampling",
    "Simulation",
    "SimulationConfig",
    "SimulationResult",
    "ThreadPoolBackend",
    "build_client_data",
    "make_backend",
]
