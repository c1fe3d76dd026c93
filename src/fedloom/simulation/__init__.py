"""Simulation: many virtual clients on one machine (process or thread pool) or on Ray.

The engine runs the pods' own round code (:func:`fedloom.algorithms.ml._local_round`) for
each virtual client, folds the updates in a fixed order into a streaming weighted sum
(bit-identical for any number of workers), and admits clients through the resource
scheduler when they declare estimates. See :class:`Simulation`.
"""

from fedloom.simulation._backend import (
    Backend,
    BackendPlan,
    ClientFailure,
    ClientResult,
    FailureKind,
)
from fedloom.simulation._client import ClientJob, ClientOutcome, ClientRunner, RunnerPlan
from fedloom.simulation._data import CLIENT_DATA, ClientData, DataSpec, build_client_data
from fedloom.simulation._engine import Simulation, SimulationResult
from fedloom.simulation._fold import OrderedFold
from fedloom.simulation._process_pool import ProcessPoolBackend
from fedloom.simulation._report import ClientRecord, RoundReport
from fedloom.simulation._sampling import Sampling
from fedloom.simulation._settings import BACKENDS, ClientResources, SimulationConfig
from fedloom.simulation._startup import make_backend
from fedloom.simulation._threads import ThreadPoolBackend

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
