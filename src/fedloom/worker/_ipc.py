"""The link between a pod and one task's child: a pipe of msgpack control items.

Nothing on it is pickled: each item is a msgpack map (``op`` plus fields). Messages travel
as fedloom wire frames; a frame up to :data:`INLINE_FRAME_BYTES` rides inside the item, a
larger one (model parameters in, updates out) is written once to a file in a per-task
folder on a memory-backed file system (``/dev/shm`` where there is one) and the reader maps
it (``mmap``: the decoded tensors are views of that mapping, no further copy) and deletes
the file. The pod removes the whole folder when the task ends, so a child killed halfway
leaves nothing behind.

Ops, child → pod: ``ready`` (the worker is rebuilt), ``send`` (``id``, a frame),
``done`` (``status`` and ``record`` or ``error``). Pod → child: ``ack`` (``id``, ``error``),
``deliver`` (a frame), ``stop``.
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile
import threading
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import msgpack

from fedloom.errors import ProtocolError, TransportError
from fedloom.wire import Message, decode, encode

INLINE_FRAME_BYTES = 1 << 20
MAX_CONTROL_BYTES = INLINE_FRAME_BYTES + (64 << 10)


def exchange_folder(task_id: str) -> Path:
    """A fresh folder for one task's large frames (memory-backed where possible).

    Folders left behind by pods that were killed (their pid is in the name and no longer
    runs) are removed first, so a crash-looping pod cannot fill /dev/shm.
    """
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    sweep_exchange_folders(base)
    folder = base / f"{_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    folder.mkdir(mode=0o700)
    return folder


_PREFIX = "fedloom-"


def sweep_exchange_folders(base: Path) -> list[Path]:
    """Remove this user's exchange folders whose pod process is gone; return them."""
    removed: list[Path] = []
    try:
        entries = list(base.iterdir())
    except OSError:
        return removed
    for entry in entries:
        owner = _owner_pid(entry.name)
        if owner is None or _alive(owner):
            continue
        try:
            if not entry.is_dir() or entry.is_symlink() or entry.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _owner_pid(name: str) -> int | None:
    if not name.startswith(_PREFIX):
        return None
    pid, _, token = name[len(_PREFIX) :].partition("-")
    if not pid.isdigit() or len(token) != 12:
        return None
    return int(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class Link:
    """One end of the pod ↔ child pipe; thread-safe for senders, one reader."""

    def __init__(self, connection: Connection, folder: Path) -> None:
        self._connection = connection
        self._folder = folder
        self._write_lock = threading.Lock()

    def put(
        self, op: str, fields: dict[str, Any] | None = None, message: Message | None = None
    ) -> None:
        """Send one item (with ``message`` as a frame when given).

        Raises:
            TransportError: the other end is gone.
            WireError: the message cannot be encoded.
        """
        item: dict[str, Any] = {"op": op, **(fields or {})}
        if message is not None:
            frame = encode(message)
            if len(frame) <= INLINE_FRAME_BYTES:
                item["frame"] = frame
            else:
                item["file"] = self._write_file(frame)
        data = msgpack.packb(item, use_bin_type=True)
        try:
            with self._write_lock:
                self._connection.send_bytes(data)
        except (OSError, ValueError) as exc:
            raise TransportError(f"the task's child process link is closed: {exc}") from exc

    def get(self) -> dict[str, Any]:
        """The next item (blocking); a frame it carries is decoded into ``item["message"]``.

        Raises:
            EOFError: the other end closed the pipe (or died).
            ProtocolError: the item is malformed.
        """
        try:
            data = self._connection.recv_bytes(MAX_CONTROL_BYTES)
        except (OSError, TypeError, ValueError) as exc:  # closed under a blocked reader
            raise EOFError(str(exc)) from exc
        try:
            item = msgpack.unpackb(data, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types on garbage
            raise ProtocolError(f"malformed item on the child link: {type(exc).__name__}") from None
        if not isinstance(item, dict) or not isinstance(item.get("op"), str):
            raise ProtocolError("an item on the child link must be a map with an 'op'")
        if isinstance(item.get("frame"), bytes):
            item["message"] = decode(item.pop("frame"))
        elif isinstance(item.get("file"), str):
            item["message"] = decode(memoryview(self._read_file(item.pop("file"))))
        return item

    def close(self) -> None:
        self._connection.close()

    def _write_file(self, frame: bytes) -> str:
        name = f"{uuid.uuid4().hex}.frame"
        path = self._folder / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(frame)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        return name

    def _read_file(self, name: str) -> mmap.mmap:
        if "/" in name or name.startswith("."):
            raise ProtocolError(f"bad frame file name {name!r} on the child link")
        path = self._folder / name
        with path.open("rb") as handle:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        path.unlink()  # the mapping stays valid; the space is freed when it is dropped
        return mapped
