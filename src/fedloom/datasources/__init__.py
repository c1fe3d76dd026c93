"""Datasources: how a pod or a virtual client reads its data, and seeded partitions.

The data are tables, arrays or folders of files.
"""

from fedloom.datasources._arrays import ArraySource
from fedloom.datasources._base import Datasource, check_usable
from fedloom.datasources._file_listing import FileCount, FileRecord
from fedloom.datasources._file_loaders import LOADERS, Loader
from fedloom.datasources._files import FileSource
from fedloom.datasources._partition import dirichlet_partition, iid_partition
from fedloom.datasources._table import DATASOURCE_KINDS, TableSource, datasource_from_config

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
    "check_usable",
    "datasource_from_config",
    "dirichlet_partition",
    "iid_partition",
]
