"""fedloom.store: what the modeller and the pods remember between runs.

Two small contracts, each with an in-memory and an SQLite implementation:
:class:`ExperimentStore` (modeller: experiments, rounds, metrics, safetensors checkpoints)
and :class:`PodStore` (pod: task runs, processed and failed files keyed by :func:`task_hash`,
per-model usage). :mod:`fedloom.testing._store_conformance` checks
any implementation against the contract. An experiment whose modeller crashed or failed
is made resumable by :meth:`ExperimentStore.reopen_experiment`, which keeps the rounds up
to :func:`last_complete_round`; :class:`CheckpointRetention` says which round checkpoints
an experiment keeps (:meth:`ExperimentStore.delete_checkpoints` drops the others).
"""

from fedloom.store._base import (
    EXPERIMENT_STATUSES,
    FAILED_FILE_LEVELS,
    MAX_FILE_NAME_LENGTH,
    MAX_ROUND_INDEX,
    TASK_RUN_STATUSES,
    CheckpointRef,
    ExperimentRecord,
    ExperimentStore,
    ExperimentStoreStatistics,
    FailedFile,
    PodStore,
    PodStoreStatistics,
    RoundRecord,
    TaskRunRecord,
    last_complete_round,
    task_hash,
)
from fedloom.store._checkpoints import SUPPORTED_CHECKPOINT_DTYPES
from fedloom.store._memory import MemoryExperimentStore, MemoryPodStore
from fedloom.store._retention import CheckpointRetention
from fedloom.store._schema import DEFAULT_BUSY_TIMEOUT_S, SCHEMA_VERSION
from fedloom.store._sqlite import SqliteExperimentStore, SqlitePodStore

__all__ = [
    "CheckpointRef",
    "CheckpointRetention",
    "DEFAULT_BUSY_TIMEOUT_S",
    "EXPERIMENT_STATUSES",
    "ExperimentRecord",
    "ExperimentStore",
    "ExperimentStoreStatistics",
    "FAILED_FILE_LEVELS",
    "FailedFile",
    "MAX_FILE_NAME_LENGTH",
    "MAX_ROUND_INDEX",
    "MemoryExperimentStore",
    "MemoryPodStore",
    "PodStore",
    "PodStoreStatistics",
    "RoundRecord",
    "SCHEMA_VERSION",
    "SUPPORTED_CHECKPOINT_DTYPES",
    "SqliteExperimentStore",
    "SqlitePodStore",
    "TASK_RUN_STATUSES",
    "TaskRunRecord",
    "last_complete_round",
    "task_hash",
]
