"""The pod: a data owner's node that accepts, runs and records tasks."""

from fedloom.pod._activity import PodStatistics
from fedloom.pod._config import PodConfig, load_pod_config
from fedloom.pod._pod import Pod
from fedloom.pod._policy import (
    DEFAULT_MAX_CONCURRENT_TASKS,
    DEFAULT_MODELLER_TIMEOUT,
    DEFAULT_START_TIMEOUT,
    PodPolicy,
)

__all__ = [
    "DEFAULT_MAX_CONCURRENT_TASKS",
    "DEFAULT_MODELLER_TIMEOUT",
    "DEFAULT_START_TIMEOUT",
    "Pod",
    "PodConfig",
    "PodPolicy",
    "PodStatistics",
    "load_pod_config",
]
