"""The hub store's spool folder: one file per large frame, named by its message id.

A frame is written to a temporary name first and renamed into place by
:meth:`_Spool.publish` (inside the transaction that commits its row), so a crash leaves at
worst a file no row refers to. :class:`~fedloom.hub._store.HubStore` decides which
frames go here and when a file is no longer needed.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from pathlib import Path

from fedloom.errors import (
    StoreError,
)
from fedloom.hub._store_files import (
    _discard,
    _fsync_dir,
)

logger = logging.getLogger(__name__)

_SPOOL_SUFFIX = ".frame"
_TEMP_PREFIX = ".incoming-"
_TEMP_SUFFIX = ".tmp"


class _Spool:
    """The spool files of one hub store, in ``folder``.

    Args:
        folder: the spool folder (the store creates it).
        full: flush every file and rename to disk (``synchronous="FULL"``).
    """

    def __init__(self, folder: Path, *, full: bool) -> None:
        self.folder = folder
        self._full = full

    def path(self, message_id: int) -> Path:
        """Where message ``message_id``'s frame is kept."""
        return self.folder / f"{message_id}{_SPOOL_SUFFIX}"

    def write_temp(self, view: memoryview) -> Path:
        """Write ``view`` to a new temporary file (flushed under ``full``); returns its path.

        Raises:
            StoreError: the file could not be created or written (it is removed).
        """
        try:
            descriptor, name = tempfile.mkstemp(
                prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=self.folder
            )
        except OSError as exc:
            raise StoreError(f"cannot create a spool file in {self.folder}: {exc}") from exc
        path = Path(name)
        try:
            written = 0
            while written < len(view):  # one write; the loop only resumes a short write
                written += os.write(descriptor, view[written:])
            if self._full:
                os.fsync(descriptor)
        except OSError as exc:
            _discard(path)
            raise StoreError(f"cannot write spool file {path}: {exc}") from exc
        finally:
            os.close(descriptor)
        return path

    def publish(self, temp: Path, final: Path) -> None:
        """Rename ``temp`` to ``final`` (and flush the folder under ``full``).

        Raises:
            StoreError: the file could not be renamed.
        """
        try:
            os.replace(temp, final)
        except OSError as exc:
            raise StoreError(f"cannot move spool file {temp} to {final}: {exc}") from exc
        if self._full:
            _fsync_dir(self.folder)

    def unlink(self, message_id: int) -> None:
        """Remove message ``message_id``'s spool file, if there is one (a failure is logged)."""
        path = self.path(message_id)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # harmless: the next open removes files no row refers to
            logger.warning("could not remove spool file %s: %s", path, exc)

    def read(self, message_id: int) -> bytes | None:
        """The frame in message ``message_id``'s spool file; None if the file is missing.

        Raises:
            StoreError: the file could not be read.
        """
        path = self.path(message_id)
        try:
            with io.FileIO(path, "r") as stream:
                data = stream.readall()
        except FileNotFoundError:
            data = None
        except OSError as exc:
            raise StoreError(
                f"cannot read spool file {path} of message {message_id}: {exc}"
            ) from exc
        return data

    def files(self) -> dict[int, Path]:
        """The spool files by message id; temporary files of unfinished appends are deleted.

        Raises:
            StoreError: the folder cannot be listed.
        """
        files: dict[int, Path] = {}
        try:
            entries = list(os.scandir(self.folder))
        except OSError as exc:
            raise StoreError(f"cannot list the spool folder {self.folder}: {exc}") from exc
        for entry in entries:
            name = entry.name
            if name.startswith(_TEMP_PREFIX) and name.endswith(_TEMP_SUFFIX):
                _discard(Path(entry.path))  # an append that never finished
                continue
            stem = name.removesuffix(_SPOOL_SUFFIX)
            if stem != name and stem.isascii() and stem.isdigit() and str(int(stem)) == stem:
                files[int(stem)] = Path(entry.path)
        return files
