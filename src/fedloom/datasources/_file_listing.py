"""Listing a folder of files: the records, a background count, and what counts as a file.

:class:`FileRecord` is one matching file, :class:`FileCount` a count that runs while the
listing goes on, :func:`_file_stat` which directory entries count (regular files, and
links to them that stay inside the folder).

:class:`~fedloom.datasources._files.FileSource` walks the folder with these; the pattern a
source matches files with is checked here too.
"""

from __future__ import annotations

import os
import stat
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

from fedloom.errors import ConfigError


@dataclass(frozen=True)
class FileRecord:
    """One matching file.

    Attributes:
        path: the absolute path (of the link itself, for a symlink inside the folder).
        name: the path relative to the folder with ``/`` separators; the file's key in
            reports and in the pod store, safe to send to a modeller.
        size: the size in bytes.
        mtime_ns: ``st_mtime_ns``; "processed and not modified since" compares this.
    """

    path: Path
    name: str
    size: int
    mtime_ns: int


class FileCount:
    """The result of a background count of matching files.

    Wraps a :class:`concurrent.futures.Future`, so asyncio code can
    ``await asyncio.wrap_future(count.future)``.
    """

    def __init__(self, future: Future[int]) -> None:
        self._future = future

    @property
    def future(self) -> Future[int]:
        """The underlying future (done once the count is known or failed)."""
        return self._future

    def done(self) -> bool:
        """Whether the count has finished (or failed)."""
        return self._future.done()

    def result(self, timeout: float | None = None) -> int:
        """The number of matching files, waiting up to ``timeout`` seconds.

        Raises:
            TimeoutError: the count did not finish in time.
            DataError: the folder could not be listed.
        """
        return self._future.result(timeout)


def _file_stat(entry: os.DirEntry[str], root: Path) -> os.stat_result | None:
    """The stat of a regular file or of a link's target inside ``root``; None to skip."""
    if not entry.is_symlink():
        info = entry.stat(follow_symlinks=False)
        return info if stat.S_ISREG(info.st_mode) else None
    try:
        target = Path(entry.path).resolve(strict=True)
    except (OSError, RuntimeError):  # broken link or a loop (RuntimeError before 3.13)
        return None
    if not target.is_relative_to(root):
        return None
    info = target.stat()
    return info if stat.S_ISREG(info.st_mode) else None


def _check_pattern(pattern: object, recursive: bool) -> str:
    if not isinstance(pattern, str) or not pattern.strip():
        raise ConfigError(f"pattern must be a non-empty glob such as '*.png', not {pattern!r}")
    parts = pattern.split("/")
    if pattern.startswith("/") or "\\" in pattern or any(p in ("", ".", "..") for p in parts):
        raise ConfigError(
            f"pattern {pattern!r} must be a relative glob inside the folder "
            "(no leading '/', no '.', '..' or empty parts, '/' as separator)"
        )
    if len(parts) > 1 and not recursive:
        raise ConfigError(f"pattern {pattern!r} names sub-folders: set recursive=True")
    return pattern
