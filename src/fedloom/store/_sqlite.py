"""SQLite stores: one file per modeller workspace or per pod, checkpoints beside it.

The modeller's store is :mod:`fedloom.store._sqlite_experiments`, the pod's
:mod:`fedloom.store._sqlite_pods`; this module names both.
"""

from fedloom.store._sqlite_experiments import SqliteExperimentStore
from fedloom.store._sqlite_pods import SqlitePodStore

__all__ = ["SqliteExperimentStore", "SqlitePodStore"]
