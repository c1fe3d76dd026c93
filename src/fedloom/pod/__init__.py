"""The pod: a data owner's node that accepts, runs and records tasks.

This is the public ``fedloom.pod`` API, for the pod's admin.

A pod holds datasets (:class:`TableSource`, :class:`FileSource`, :class:`ArraySource`),
accepts only what its :class:`PodPolicy` allows, runs each task in an isolated child
process (:class:`IsolationSettings`) and keeps a record in its own store
(:class:`SqlitePodStore`). ``fedloom pod start --config pod.toml`` runs
:func:`serve_pod` on :func:`load_pod_config`'s result.
"""

from fedloom._exports import public_names as _public_names
from fedloom.crypto import PublicIdentity as PublicIdentity
from fedloom.crypto import load_public_identity as load_public_identity
from fedloom.crypto import save_identity as save_identity
from fedloom.datasources import ArraySource as ArraySource
from fedloom.datasources import Datasource as Datasource
from fedloom.datasources import FileSource as FileSource
from fedloom.datasources import TableSource as TableSource
from fedloom.datasources import datasource_from_config as datasource_from_config
from fedloom.datasources import dirichlet_partition as dirichlet_partition
from fedloom.datasources import iid_partition as iid_partition
from fedloom.pod._activity import PodStatistics as PodStatistics
from fedloom.pod._config import PodConfig as PodConfig
from fedloom.pod._config import load_pod_config as load_pod_config
from fedloom.pod._daemon import serve_pod as serve_pod
from fedloom.pod._pod import Pod as Pod
from fedloom.pod._policy import DEFAULT_MAX_CONCURRENT_TASKS as DEFAULT_MAX_CONCURRENT_TASKS
from fedloom.pod._policy import DEFAULT_MODELLER_TIMEOUT as DEFAULT_MODELLER_TIMEOUT
from fedloom.pod._policy import DEFAULT_START_TIMEOUT as DEFAULT_START_TIMEOUT
from fedloom.pod._policy import PodPolicy as PodPolicy
from fedloom.store import MemoryPodStore as MemoryPodStore
from fedloom.store import SqlitePodStore as SqlitePodStore
from fedloom.worker import IsolationSettings as IsolationSettings

__all__ = _public_names(globals())
