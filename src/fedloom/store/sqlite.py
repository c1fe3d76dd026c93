"""SQLite stores: one file per modeller workspace or per pod, checkpoints beside it.

The modeller's store is :mod:`fedloom.store.sqlite_experiments`, the pod's
:mod:`fedloom.store.sqlite_pods`; this module names both.
"""

from fedloom.store.sqlite_experiments import SqliteExperimentStore
from fedloom.store.sqlite_pods import SqlitePodStore

__all__ = ["SqliteExperimentStore", "SqlitePodStore"]
