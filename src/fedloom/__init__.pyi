# The researcher's API: the one list of fedloom's top-level names. At run time
# fedloom/__init__.py imports each of them lazily from here (lazy_loader.attach_stub), so
# this file is both the type checkers' view and the source of fedloom.__all__.
from ._cluster import LocalCluster as LocalCluster
from ._cluster import PodSpec as PodSpec
from ._events import Event as Event
from ._events import EventKind as EventKind
from ._local import LocalFederation as LocalFederation
from ._local import run_local as run_local
from .algorithms._analytics_request import AnalyticsRequest as AnalyticsRequest
from .algorithms.ml import ModelSpec as ModelSpec
from .algorithms.ml import TrainingConfig as TrainingConfig
from .datasources import ArraySource as ArraySource
from .datasources import FileSource as FileSource
from .datasources import TableSource as TableSource
from .errors import FedloomError as FedloomError
from .modeller import Modeller as Modeller
from .modeller import RequestPolicy as RequestPolicy
from .modeller import TaskResult as TaskResult
from .modeller._remote import run_task_file as run_task_file
from .modeller._task_file import load_task_file as load_task_file
from .privacy import TransformSpec as TransformSpec
from .protocols import Analytics as Analytics
from .protocols import AnalyticsResult as AnalyticsResult
from .protocols import BatchedInference as BatchedInference
from .protocols import FedAvg as FedAvg
from .protocols import FedAvgResult as FedAvgResult
from .protocols import FileStatistics as FileStatistics
from .protocols import FileStatisticsResult as FileStatisticsResult
from .protocols import ResultsOnly as ResultsOnly
from .protocols import TaskProtocol as TaskProtocol
from .protocols import resume_experiment as resume_experiment
from .scheduler import ResourceBudget as ResourceBudget
from .scheduler import ResourceEstimate as ResourceEstimate
from .simulation import ClientResources as ClientResources
from .simulation import DataSpec as DataSpec
from .simulation import Sampling as Sampling
from .simulation import Simulation as Simulation
from .simulation import SimulationConfig as SimulationConfig
from .simulation import SimulationResult as SimulationResult
from .simulation._config import load_simulation_file as load_simulation_file
from .store import SqliteExperimentStore as SqliteExperimentStore
from .strategies import StrategySpec as StrategySpec

__version__: str
__all__: list[str]
