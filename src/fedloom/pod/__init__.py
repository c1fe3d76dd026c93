"""The pod: a data owner's node that accepts, runs and records tasks."""

from fedloom.pod.pod import DEFAULT_START_TIMEOUT, Pod, PodPolicy

__all__ = ["DEFAULT_START_TIMEOUT", "Pod", "PodPolicy"]
