"""Protocols: the conversations between a modeller and its pods, and their registry."""

from fedloom.protocols._analytics import Analytics, AnalyticsResult
from fedloom.protocols._base import (
    DEFAULT_MIN_ROWS,
    PROTOCOLS,
    ModellerContext,
    ReleaseGuard,
    ResumePoint,
    RoundCallback,
    TaskProtocol,
    WorkerContext,
    load_protocol,
    register_protocol,
    resume_experiment,
)
from fedloom.protocols._batched import BatchedProtocol
from fedloom.protocols._batched_parts import BatchCollector, BatchOutput, BatchWorker, SetupValues
from fedloom.protocols._fedavg import FedAvg
from fedloom.protocols._fedavg_result import FedAvgResult, RoundMetrics
from fedloom.protocols._file_statistics import (
    ChannelStatistics,
    FileStatistics,
    FileStatisticsResult,
    pool_statistics,
)
from fedloom.protocols._inference import REDUCERS, BatchedInference, InferenceResult
from fedloom.protocols._ledger import Ledger, StoreLedger
from fedloom.protocols._results_only import (
    RESULT_ALGORITHMS,
    PodResults,
    ResultAlgorithm,
    ResultsOnly,
)

__all__ = [
    "ReleaseGuard",
    "BatchCollector",
    "BatchOutput",
    "BatchWorker",
    "BatchedProtocol",
    "ChannelStatistics",
    "FileStatistics",
    "FileStatisticsResult",
    "SetupValues",
    "pool_statistics",
    "REDUCERS",
    "BatchedInference",
    "InferenceResult",
    "Ledger",
    "StoreLedger",
    "DEFAULT_MIN_ROWS",
    "PROTOCOLS",
    "RESULT_ALGORITHMS",
    "Analytics",
    "AnalyticsResult",
    "FedAvg",
    "FedAvgResult",
    "ModellerContext",
    "PodResults",
    "TaskProtocol",
    "ResultAlgorithm",
    "ResultsOnly",
    "ResumePoint",
    "RoundCallback",
    "RoundMetrics",
    "WorkerContext",
    "load_protocol",
    "register_protocol",
    "resume_experiment",
]
