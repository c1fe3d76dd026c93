"""Checkpoint arrays: validation, safetensors encoding, atomic files, verified reads.

A checkpoint is a mapping of names to numpy arrays saved as one safetensors file at
``<workspace>/checkpoints/<experiment_id>/round-<NNNNN>.safetensors``. The file is written
to a temporary name in the same folder, flushed to disk, then moved into place with
:func:`os.replace`, so a crash leaves either the old state or the new file, never half a file.
The store keeps the SHA-256 of the bytes and checks it on every load.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import safetensors.numpy

from fedloom.errors import ConfigError, StoreError

logger = logging.getLogger(__name__)

#: The numpy dtypes a checkpoint can hold (those safetensors round-trips to numpy).
SUPPORTED_CHECKPOINT_DTYPES: frozenset[str] = frozenset(
    {
        "bool",
        "int8",
        "uint8",
        "int16",
        "uint16",
        "int32",
        "uint32",
        "int64",
        "uint64",
        "float16",
        "float32",
        "float64",
        "complex64",
    }
)
#: The folder, next to the store's database file, that holds checkpoint files.
CHECKPOINT_DIR_NAME = "checkpoints"
_RESERVED_NAMES = frozenset({"__metadata__"})  # the safetensors header key


def prepare_arrays(arrays: object) -> dict[str, npt.NDArray[Any]]:
    """C-contiguous, native-byte-order copies of ``arrays``; ConfigError naming a bad entry."""
    if not isinstance(arrays, Mapping):
        raise ConfigError(f"checkpoint arrays must be a mapping, got {type(arrays).__name__}")
    prepared: dict[str, npt.NDArray[Any]] = {}
    for name, array in arrays.items():
        if not isinstance(name, str):
            raise ConfigError(f"checkpoint array name {name!r} must be a str")
        if name in _RESERVED_NAMES:
            raise ConfigError(f"checkpoint array name {name!r} is reserved by safetensors")
        if not isinstance(array, np.ndarray):
            raise ConfigError(
                f"checkpoint array {name!r} must be a numpy array, got {type(array).__name__}"
            )
        if array.dtype.name not in SUPPORTED_CHECKPOINT_DTYPES:
            supported = ", ".join(sorted(SUPPORTED_CHECKPOINT_DTYPES))
            raise ConfigError(
                f"checkpoint array {name!r} has dtype {array.dtype.name}, which safetensors "
                f"cannot store; convert it to one of: {supported}"
            )
        native = array.dtype.newbyteorder("=")
        prepared[name] = np.array(array, dtype=native, order="C", copy=True)
    return prepared


def encode_arrays(arrays: Mapping[str, npt.NDArray[Any]]) -> bytes:
    """The safetensors bytes of arrays already checked by :func:`prepare_arrays`."""
    return safetensors.numpy.save(dict(arrays))


def decode_arrays(data: bytes, label: str) -> dict[str, npt.NDArray[Any]]:
    """Writable arrays from safetensors bytes; StoreError if the bytes are not a checkpoint."""
    try:
        loaded = safetensors.numpy.load(data)
    except Exception as exc:  # safetensors raises its own untyped error
        raise StoreError(f"checkpoint {label} could not be decoded: {exc}") from exc
    return {name: np.array(array, copy=True) for name, array in loaded.items()}


def sha256_hex(data: bytes) -> str:
    """The SHA-256 of ``data`` as 64 lowercase hex digits."""
    return hashlib.sha256(data).hexdigest()


def copy_arrays(arrays: Mapping[str, npt.NDArray[Any]]) -> dict[str, npt.NDArray[Any]]:
    """Independent copies of ``arrays``."""
    return {name: np.array(array, copy=True) for name, array in arrays.items()}


def checkpoint_folder_relpath(experiment_id: str) -> str:
    """The folder of an experiment's checkpoint files relative to the workspace."""
    return f"{CHECKPOINT_DIR_NAME}/{experiment_id}"


def checkpoint_relpath(experiment_id: str, round_index: int) -> str:
    """The path of a checkpoint file relative to the workspace, with ``/`` separators."""
    return f"{checkpoint_folder_relpath(experiment_id)}/round-{round_index:05d}.safetensors"


def stage_file(final_path: Path, data: bytes) -> Path:
    """Write ``data`` to a new temporary file next to ``final_path`` and flush it to disk.

    Raises:
        StoreError: the folder or the file could not be written.
    """
    try:
        final_path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(
            prefix=f".{final_path.name}.", suffix=".tmp", dir=final_path.parent
        )
    except OSError as exc:
        raise StoreError(f"cannot write checkpoint {final_path}: {exc}") from exc
    temp_path = Path(name)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
    except OSError as exc:
        discard_file(temp_path)
        raise StoreError(f"cannot write checkpoint {final_path}: {exc}") from exc
    return temp_path


def publish_file(temp_path: Path, final_path: Path) -> None:
    """Move a staged file into place atomically and flush the folder entry.

    Raises:
        StoreError: the file could not be moved.
    """
    try:
        os.replace(temp_path, final_path)
    except OSError as exc:
        raise StoreError(f"cannot write checkpoint {final_path}: {exc}") from exc
    _fsync_dir(final_path.parent)


def discard_file(path: Path) -> None:
    """Remove a staged file that will not be published (missing is fine)."""
    try:
        path.unlink(missing_ok=True)
    except OSError:
        logger.warning("could not remove temporary checkpoint file %s", path)


def read_verified(path: Path, expected_sha256: str, label: str) -> dict[str, npt.NDArray[Any]]:
    """Read a checkpoint file, check its SHA-256, and decode it.

    Raises:
        StoreError: the file is missing or unreadable, or its bytes are not the ones saved.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise StoreError(f"checkpoint {label} is missing: no file at {path}") from exc
    except OSError as exc:
        raise StoreError(f"checkpoint {label} could not be read from {path}: {exc}") from exc
    if sha256_hex(data) != expected_sha256:
        raise StoreError(
            f"checkpoint {label} at {path} was modified or corrupted "
            "(its SHA-256 no longer matches the one recorded when it was saved)"
        )
    return decode_arrays(data, label)


def _fsync_dir(folder: Path) -> None:
    if os.name != "posix":
        return
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        logger.debug("could not fsync folder %s", folder)
    finally:
        os.close(descriptor)
