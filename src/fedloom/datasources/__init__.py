"""Datasources: how a pod or a virtual client reads its data (tables, arrays, folders of
files), and seeded partitions."""

from fedloom.datasources.arrays import ArraySource
from fedloom.datasources.base import Datasource, check_datasource
from fedloom.datasources.file_listing import FileCount, FileRecord
from fedloom.datasources.file_loaders import LOADERS, Loader
from fedloom.datasources.files import FileSource
from fedloom.datasources.partition import dirichlet_partition, iid_partition
from fedloom.datasources.table import DATASOURCE_KINDS, TableSource, datasource_from_config

__all__ = [
    "ArraySource",
    "DATASOURCE_KINDS",
    "Datasource",
    "FileCount",
    "FileRecord",
    "FileSource",
    "LOADERS",
    "Loader",
    "TableSource",
    "check_datasource",
    "datasource_from_config",
    "dirichlet_partition",
    "iid_partition",
]
