"""A datasource over a folder of files, each file one data point (images, one-row tables, ...).

:class:`FileSource` lists the folder lazily (one directory read at a time, entries sorted by
name), groups the listing into batches of a configurable size, and turns each file into a
value with a loader picked by name from :data:`LOADERS`. A batched protocol can start on the
first batch while :meth:`FileSource.count_in_background` is still counting the files.

A file that cannot be loaded is a :class:`~fedloom.errors.DataError` naming the file (by its
name relative to the folder, never its absolute path), so a caller can record it as a
file-level failure and go on with the rest of the batch.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from itertools import islice
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from fedloom.datasources._base import describe_frame
from fedloom.datasources._file_listing import FileCount, FileRecord, _check_pattern, _file_stat
from fedloom.datasources._file_loaders import _OPTION_CHECKS, LOADERS
from fedloom.errors import (
    ConfigError,
    DataError,
    DatasetNotFoundError,
    EmptyDatasetError,
    SchemaMismatchError,
)

DEFAULT_BATCH_SIZE = 32
LABEL_SOURCES = ("parent",)
"""Values of ``label_from``: ``parent`` = the class folder that holds the file."""


class FileSource:
    """A folder of files, each file one data point.

    Args:
        folder: the folder to read.
        pattern: a glob matched against each file's relative name from the right
            (``*.png`` matches in every sub-folder); it may contain ``/`` only with
            ``recursive=True``. Matching is case-sensitive.
        recursive: also list sub-folders (depth first, sorted by name).
        loader: a name in :data:`LOADERS`.
        loader_options: options for the loader; the built-in loaders check theirs here.
        batch_size: files per batch of :meth:`batches`.
        label_from: ``"parent"``: the class folder directly under ``folder`` is the file's
            label (``folder/<class>/<file>``); needs ``recursive=True``.

    Hidden entries (``.*``) are skipped, and so are symlinks that resolve outside the
    folder, symlinked folders (which could loop), broken links and special files.
    Construction never touches the disk.

    Raises:
        ConfigError: (at construction) a malformed pattern, batch size, loader option or
            ``label_from``.
        UnknownNameError: (at construction) ``loader`` is not registered.
        DatasetNotFoundError: (on first use) the folder does not exist.
        DataError: (on use) a folder could not be listed or a file could not be loaded.
    """

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        pattern: str = "*",
        recursive: bool = False,
        loader: str = "image",
        loader_options: Mapping[str, Any] | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        label_from: str | None = None,
    ) -> None:
        if not isinstance(folder, str | os.PathLike):
            raise ConfigError(f"folder must be a path, not {type(folder).__name__}")
        self._folder = Path(folder)
        self._pattern = _check_pattern(pattern, recursive)
        self._recursive = recursive
        self._loader_name = loader
        self._loader = LOADERS.get(loader)
        if loader_options is not None and not isinstance(loader_options, Mapping):
            raise ConfigError("loader_options must be a mapping of option name to value")
        self._options: Mapping[str, Any] = dict(loader_options or {})
        check = _OPTION_CHECKS.get(loader)
        if check is not None:
            check(self._options)
        self._batch_size = _check_batch_size(batch_size)
        if label_from is not None and label_from not in LABEL_SOURCES:
            raise ConfigError(f"label_from must be one of {list(LABEL_SOURCES)} or None")
        if label_from is not None and not recursive:
            raise ConfigError(
                "label_from='parent' reads files inside class folders: set recursive=True"
            )
        self._label_from = label_from
        self._root_path: Path | None = None
        self._classes: tuple[str, ...] | None = None

    def identity(self) -> dict[str, Any]:
        """What makes two sources "the same data" for a task's record of processed files.

        The folder's name, pattern, recursion, loader and its options (no listing).
        """
        return {
            "kind": "folder",
            "folder": self._folder.name,
            "pattern": self._pattern,
            "recursive": self._recursive,
            "loader": self._loader_name,
            "loader_options": dict(self._options),
        }

    # --- listing --------------------------------------------------------------------------

    def _root(self) -> Path:
        if self._root_path is None:
            root = self._folder.resolve()
            if not root.is_dir():
                what = "is not a folder" if root.exists() else "does not exist"
                raise DatasetNotFoundError(
                    f"the data folder {str(self._folder)!r} {what}",
                    public=f"the data folder {what}",
                )
            self._root_path = root
        return self._root_path

    def files(self) -> Iterator[FileRecord]:
        """The matching files, streamed, sorted by name within each folder.

        Raises:
            DatasetNotFoundError: (at once) the folder does not exist.
            DataError: (while iterating) a folder could not be listed.
        """
        root = self._root()
        return self._walk(root, root, "")

    def _walk(self, root: Path, directory: Path, prefix: str) -> Iterator[FileRecord]:
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            where = f"sub-folder {prefix.rstrip('/')!r}" if prefix else "data folder"
            raise DataError(f"could not list the {where}: {exc.strerror or exc}") from exc
        for entry in entries:
            if entry.name.startswith("."):
                continue
            name = prefix + entry.name
            try:
                if entry.is_dir(follow_symlinks=False):
                    if self._recursive:
                        yield from self._walk(root, Path(entry.path), name + "/")
                    continue
                if not PurePosixPath(name).match(self._pattern):
                    continue
                info = _file_stat(entry, root)
            except OSError:  # vanished between listing and stat: not a file any more
                continue
            if info is not None:
                yield FileRecord(Path(entry.path), name, info.st_size, info.st_mtime_ns)

    def count_in_background(self) -> FileCount:
        """Count the matching files in a daemon thread; the listing may go on meanwhile.

        Raises:
            DatasetNotFoundError: (at once) the folder does not exist.
        """
        self._root()
        future: Future[int] = Future()
        future.set_running_or_notify_cancel()

        def count() -> None:
            try:
                future.set_result(sum(1 for _ in self.files()))
            except BaseException as exc:  # the future must always finish
                future.set_exception(exc)

        threading.Thread(target=count, name="fedloom-file-count", daemon=True).start()
        return FileCount(future)

    def batches(
        self, records: Iterable[FileRecord] | None = None, batch_size: int | None = None
    ) -> Iterator[list[FileRecord]]:
        """Group ``records`` (default: :meth:`files`) lazily into lists of ``batch_size``.

        The last batch may be shorter; no batch is empty.

        Raises:
            ConfigError: ``batch_size`` is not an int >= 1.
            DatasetNotFoundError: the folder does not exist (when listing it).
        """
        size = self._batch_size if batch_size is None else _check_batch_size(batch_size)
        iterator = iter(self.files() if records is None else records)
        return iter(lambda: list(islice(iterator, size)), [])

    # --- loading --------------------------------------------------------------------------

    def load(self, record: FileRecord) -> Any:
        """The loader's value for one file.

        Raises:
            DataError: the file is corrupt or unreadable; the message names the file by
                its relative name and the original error is the ``__cause__``.
            ConfigError: the loader rejected its options.
        """
        try:
            return self._loader(record.path, self._options)
        except ConfigError:
            raise
        except Exception as exc:  # a loader is user code: any failure is this file's
            detail = str(exc).replace(str(record.path), record.name) or type(exc).__name__
            raise DataError(
                f"could not load file {record.name!r} with loader {self._loader_name!r}: {detail}"
            ) from exc

    def load_batch(
        self, records: Sequence[FileRecord]
    ) -> tuple[list[tuple[FileRecord, Any]], dict[str, DataError]]:
        """Load each file: the good ones in order with their records, the failures by name."""
        loaded: list[tuple[FileRecord, Any]] = []
        failed: dict[str, DataError] = {}
        for record in records:
            try:
                loaded.append((record, self.load(record)))
            except DataError as exc:
                failed[record.name] = exc
        return loaded, failed

    def stack(self, values: Sequence[Any]) -> np.ndarray:
        """Stack loaded values into one array with samples on the first axis.

        Arrays (the ``image`` loader) are stacked as they are; mappings (the ``table``
        loader) become float32 rows in the key order of the first value.

        Raises:
            EmptyDatasetError: ``values`` is empty.
            SchemaMismatchError: shapes or keys differ, values are not numeric, or the
                loader's values (``bytes``, ...) cannot be stacked.
        """
        if len(values) == 0:
            raise EmptyDatasetError("there are no loaded values to stack")
        if all(isinstance(value, np.ndarray) for value in values):
            shapes = sorted({tuple(value.shape) for value in values})
            if len(shapes) > 1:
                raise SchemaMismatchError(
                    f"loaded arrays have different shapes {shapes[:5]}; give the loader "
                    "a size option (image: size=[h, w]) so every sample has the same shape"
                )
            return np.stack(values)
        if all(isinstance(value, Mapping) for value in values):
            return _stack_rows(values)
        kinds = sorted({type(value).__name__ for value in values})
        raise SchemaMismatchError(
            f"values of loader {self._loader_name!r} ({', '.join(kinds)}) cannot be stacked "
            "into an array; use load_batch() and handle the values yourself"
        )

    # --- labels ---------------------------------------------------------------------------

    @property
    def classes(self) -> list[str]:
        """The class names (sorted class folders), or ``[]`` without ``label_from``.

        Read once and kept, so labels stay the same while the source is used.

        Raises:
            DatasetNotFoundError: the folder does not exist.
        """
        if self._label_from is None:
            return []
        if self._classes is None:
            root = self._root()
            with os.scandir(root) as listing:
                self._classes = tuple(
                    sorted(
                        entry.name
                        for entry in listing
                        if not entry.name.startswith(".") and entry.is_dir(follow_symlinks=False)
                    )
                )
        return list(self._classes)

    def labels(self, records: Iterable[FileRecord]) -> np.ndarray | None:
        """Integer labels (int64, index in :attr:`classes`), or ``None`` without ``label_from``.

        Raises:
            SchemaMismatchError: a file is not inside a class folder, or its class folder
                appeared after :attr:`classes` was read.
        """
        if self._label_from is None:
            return None
        index = {name: i for i, name in enumerate(self.classes)}
        labels: list[int] = []
        for record in records:
            head, sep, _ = record.name.partition("/")
            if not sep:
                raise SchemaMismatchError(
                    f"file {record.name!r} is not inside a class folder; label_from='parent' "
                    "needs every file under <folder>/<class>/"
                )
            if head not in index:
                raise SchemaMismatchError(
                    f"file {record.name!r} is in class folder {head!r}, which is not one of "
                    f"the classes read at start ({len(index)}); recreate the source"
                )
            labels.append(index[head])
        return np.asarray(labels, dtype=np.int64)

    # --- Datasource protocol --------------------------------------------------------------

    def __len__(self) -> int:
        """The number of matching files (a full listing).

        Raises:
            EmptyDatasetError: no file matches.
        """
        count = sum(1 for _ in self.files())
        if count == 0:
            raise EmptyDatasetError(self._empty_message())
        return count

    def table(self) -> pd.DataFrame:
        """One row per file: ``name``, ``size``, ``mtime_ns`` (and ``label``)."""
        records = list(self.files())
        frame = pd.DataFrame(
            {
                "name": pd.Series([r.name for r in records], dtype=object),
                "size": pd.Series([r.size for r in records], dtype=np.int64),
                "mtime_ns": pd.Series([r.mtime_ns for r in records], dtype=np.int64),
            }
        )
        labels = self.labels(records)
        if labels is not None:
            frame["label"] = labels
        return frame

    def arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Load and stack every file; fine for small folders only.

        Batched protocols use :meth:`batches` and :meth:`load_batch` instead, which keep one
        batch in memory and treat a bad file as a file-level failure.

        Raises:
            EmptyDatasetError: no file matches.
            DataError: a file could not be loaded (the first bad one).
            SchemaMismatchError: the values cannot be stacked (see :meth:`stack`).
        """
        records = list(self.files())
        if not records:
            raise EmptyDatasetError(self._empty_message())
        x = self.stack([self.load(record) for record in records])
        if x.dtype != np.float32 and np.issubdtype(x.dtype, np.number):
            x = x.astype(np.float32)
        return x, self.labels(records)

    def describe(self) -> dict[str, Any]:
        """The JSON-able summary of :meth:`Datasource.describe`, for a folder of files.

        ``kind`` "folder", the folder's name (never its absolute path), the pattern,
        ``count`` (= ``rows``), the loader, and the table's columns.
        """
        summary = describe_frame("folder", self.table())
        summary.update(
            folder=self._root().name,
            pattern=self._pattern,
            recursive=self._recursive,
            count=summary["rows"],
            loader=self._loader_name,
            batch_size=self._batch_size,
            label_from=self._label_from,
        )
        if self._label_from is not None:
            summary["classes"] = self.classes
        return summary

    def _empty_message(self) -> str:
        return (
            f"no file in data folder {self._folder.name!r} matches pattern {self._pattern!r}"
            f"{' (recursively)' if self._recursive else ''}; hidden files are skipped"
        )

    def __repr__(self) -> str:
        return (
            f"FileSource({self._folder.name!r}, pattern={self._pattern!r}, "
            f"loader={self._loader_name!r}, batch_size={self._batch_size})"
        )

    def check(self) -> None:
        """Check that the folder exists and can be listed; no file is opened.

        Raises:
            DatasetNotFoundError: the folder does not exist, or is not a folder.
            DataError: it cannot be listed.
        """
        try:
            with os.scandir(self._root()):
                pass
        except OSError as exc:
            problem = exc.strerror or str(exc)
            folder = self._folder.name
            raise DataError(f"could not list the data folder {folder!r}: {problem}") from exc


# --- helpers ------------------------------------------------------------------------------


def _check_batch_size(batch_size: object) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an int >= 1, not {batch_size!r}")
    return batch_size


def _stack_rows(values: Sequence[Any]) -> np.ndarray:
    keys = list(values[0])
    for value in values:
        if list(value) != keys:
            raise SchemaMismatchError(
                f"loaded rows have different columns: {keys[:10]} and {list(value)[:10]}"
            )
    try:
        return np.asarray([[value[k] for k in keys] for value in values], dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise SchemaMismatchError(
            f"loaded rows must hold numbers to be stacked; columns {keys[:10]}: {exc}"
        ) from exc
