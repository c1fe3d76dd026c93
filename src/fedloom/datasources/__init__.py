"""Datasources: how a pod or a virtual client reads its data, and seeded partitions."""

from fedloom.datasources.arrays import ArraySource
from fedloom.datasources.base import Datasource
from fedloom.datasources.partition import dirichlet_partition, iid_partition
from fedloom.datasources.table import TableSource, datasource_from_config

__all__ = [
    "ArraySource",
    "Datasource",
    "TableSource",
    "datasource_from_config",
    "dirichlet_partition",
    "iid_partition",
]
