"""Model parameters in flat shared-memory blocks, and torch modules that live in them.

A :class:`FlatLayout` packs a model's ``state_dict`` into one flat buffer per dtype (most
models: a single float32 vector), so copying, checking and folding a whole model is one
vectorised operation per dtype instead of one per tensor. A :class:`SharedBlock` is such
a buffer set in :mod:`multiprocessing.shared_memory`; :func:`alias_module` points a
module's parameters and buffers *into* a block, so training writes its result straight
into shared memory and nobody copies it out.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import secrets
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from fedloom.algorithms._aggregation import all_finite
from fedloom.errors import ConfigError

__all__ = ["FlatLayout", "ModuleAlias", "SharedBlock", "alias_module", "all_finite"]

logger = logging.getLogger(__name__)

_ALIGN = 64  # each dtype group starts on a cache line


@dataclass(frozen=True)
class _Entry:
    key: str
    group: str
    offset: int  # in elements, inside the group
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class FlatLayout:
    """Where each state entry lives: ``key → (dtype group, offset, shape)``.

    Picklable and small: it is what a worker needs to map a block another process made.
    """

    entries: tuple[_Entry, ...]
    groups: tuple[tuple[str, int], ...]  # (numpy dtype name, element count), in order

    @classmethod
    def of(cls, state: Mapping[str, torch.Tensor | npt.NDArray[Any]]) -> FlatLayout:
        """The layout of a ``state_dict`` (or named arrays) in key order.

        Raises:
            ConfigError: an entry is not a tensor/array, or its dtype has no numpy twin.
        """
        counts: dict[str, int] = {}
        entries: list[_Entry] = []
        for key, value in state.items():
            group = _dtype_name(key, value)
            shape = tuple(int(n) for n in value.shape)
            offset = counts.get(group, 0)
            entries.append(_Entry(key, group, offset, shape))
            counts[group] = offset + math.prod(shape)
        if not entries:
            raise ConfigError("the model has no state to share")
        return cls(tuple(entries), tuple(counts.items()))

    @property
    def keys(self) -> list[str]:
        return [entry.key for entry in self.entries]

    @property
    def nbytes(self) -> int:
        """Bytes of one block with this layout (alignment included)."""
        return sum(_aligned(count * np.dtype(name).itemsize) for name, count in self.groups)

    def zeros(self) -> dict[str, torch.Tensor]:
        """Fresh zeroed flat tensors, one per dtype group (private memory, not shared)."""
        return {
            name: torch.from_numpy(np.zeros(count, dtype=np.dtype(name)))
            for name, count in self.groups
        }

    def views(self, flats: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-key tensor views into the flat group tensors (no copies)."""
        return {
            e.key: flats[e.group][e.offset : e.offset + e.size].view(e.shape) for e in self.entries
        }

    def pack(
        self, arrays: Mapping[str, npt.NDArray[Any]], flats: Mapping[str, torch.Tensor]
    ) -> None:
        """Copy named arrays into the flat tensors.

        Raises:
            ConfigError: a key is missing or unknown, or a shape or dtype differs.
        """
        unknown = sorted(set(arrays) - set(self.keys))
        missing = [key for key in self.keys if key not in arrays]
        if unknown or missing:
            raise ConfigError(
                f"state keys do not fit the layout: unknown {unknown}, missing {missing}"
            )
        for entry, view in zip(self.entries, self.views(flats).values(), strict=True):
            array = arrays[entry.key]
            if tuple(array.shape) != entry.shape or np.dtype(array.dtype).name != entry.group:
                raise ConfigError(
                    f"state entry {entry.key!r} is {array.dtype}{tuple(array.shape)}, "
                    f"expected {entry.group}{entry.shape}"
                )
            view.copy_(torch.as_tensor(array).reshape(entry.shape))

    def unpack(self, flats: Mapping[str, torch.Tensor]) -> dict[str, npt.NDArray[Any]]:
        """Named numpy copies of the flat tensors (safe to keep after the block is gone)."""
        return {key: view.numpy().copy() for key, view in self.views(flats).items()}


class SharedBlock:
    """One flat tensor per dtype group of a :class:`FlatLayout`, in shared memory.

    The creator owns the segment (``unlink`` on :meth:`close`); other processes
    :meth:`attach` by name. Tensors returned by :attr:`flats` alias the segment: drop them
    before closing (a segment with live views cannot be closed; :meth:`close` then leaves
    it to process exit).
    """

    def __init__(self, layout: FlatLayout, memory: shared_memory.SharedMemory, owner: bool):
        self.layout = layout
        self._memory = memory
        self._owner = owner
        self._unlinked = False
        _OPEN.add(memory)
        self.flats: dict[str, torch.Tensor] = {}
        position = 0
        buffer = memory.buf
        if buffer is None:
            raise ConfigError(f"shared-memory block {memory.name!r} is closed")
        for name, count in layout.groups:
            dtype = np.dtype(name)
            # frombuffer keeps an export on the mapping: close() cannot unmap live views
            array = np.frombuffer(buffer, dtype=dtype, count=count, offset=position)
            self.flats[name] = torch.from_numpy(array)
            position += _aligned(count * dtype.itemsize)

    @classmethod
    def create(cls, layout: FlatLayout, *, prefix: str = "fedloom-sim") -> SharedBlock:
        """A new zeroed segment named ``<prefix>-<random>``."""
        name = f"{prefix}-{secrets.token_hex(6)}"
        memory = shared_memory.SharedMemory(name=name, create=True, size=max(1, layout.nbytes))
        return cls(layout, memory, owner=True)

    @classmethod
    def attach(cls, layout: FlatLayout, name: str) -> SharedBlock:
        """Map a segment another process created.

        Raises:
            ConfigError: no segment of that name, or it is smaller than the layout needs.
        """
        try:
            memory = _attach(name)
        except FileNotFoundError as exc:
            raise ConfigError(f"no shared-memory block named {name!r}") from exc
        if memory.size < layout.nbytes:
            memory.close()
            raise ConfigError(
                f"shared-memory block {name!r} holds {memory.size} bytes, "
                f"the layout needs {layout.nbytes}"
            )
        return cls(layout, memory, owner=False)

    @property
    def name(self) -> str:
        return self._memory.name

    def views(self) -> dict[str, torch.Tensor]:
        return self.layout.views(self.flats)

    def copy_from(self, other: SharedBlock | Mapping[str, torch.Tensor]) -> None:
        """Overwrite this block with another block's (or flat tensors') contents."""
        source = other.flats if isinstance(other, SharedBlock) else other
        for name, flat in self.flats.items():
            flat.copy_(source[name])

    def is_finite(self) -> bool:
        """True when no float entry holds NaN or Inf (see :func:`all_finite`)."""
        return all_finite(self.flats)

    def close(self) -> None:
        """Forget the views and unmap; the creator also removes the segment's name.

        Views still held elsewhere keep the mapping (and their memory) alive until they
        are gone or the process exits; they never point at unmapped memory.
        """
        self.flats = {}
        if self._owner and not self._unlinked:
            self._unlinked = True
            with contextlib.suppress(FileNotFoundError):
                self._memory.unlink()
        _OPEN.discard(self._memory)
        _close_or_linger(self._memory)


_OPEN: weakref.WeakSet[shared_memory.SharedMemory] = weakref.WeakSet()
"""Mappings of blocks not closed yet."""
_LINGERING: list[shared_memory.SharedMemory] = []
"""Mappings closed while views of them were alive: retried later, forgotten at exit."""


def _close_or_linger(memory: shared_memory.SharedMemory) -> None:
    for waiting in list(_LINGERING):
        with contextlib.suppress(BufferError):
            waiting.close()
            _LINGERING.remove(waiting)
    try:
        memory.close()
    except BufferError:
        logger.debug("shared block %s still has views; unmapped when they are gone", memory.name)
        _LINGERING.append(memory)


@atexit.register
def _forget_lingering() -> None:
    """At exit, drop the handles quietly (the OS unmaps; closing now would only complain)."""
    for memory in [*_LINGERING, *_OPEN]:
        memory._buf = None  # type: ignore[attr-defined]
        memory._mmap = None  # type: ignore[attr-defined]
    _LINGERING.clear()


def alias_module(module: torch.nn.Module, views: Mapping[str, torch.Tensor]) -> None:
    """Make the module's parameters and persistent buffers *be* ``views`` (no copy).

    After this, an optimizer step writes into whatever memory the views live in.

    Raises:
        ConfigError: the views do not cover the module's state exactly.
    """
    ModuleAlias(module).point_at(views)


class ModuleAlias:
    """:func:`alias_module` for one module, many times: the module is walked once."""

    def __init__(self, module: torch.nn.Module) -> None:
        self._targets = list(_state_tensors(module))
        self._keys = {key for key, _ in self._targets}

    def point_at(self, views: Mapping[str, torch.Tensor]) -> None:
        """Alias the module's state to ``views``; nothing changes if they do not fit.

        Raises:
            ConfigError: the views do not cover the module's state exactly.
        """
        if len(views) != len(self._keys) or any(
            (view := views.get(key)) is None
            or view.shape != tensor.shape
            or view.dtype != tensor.dtype
            for key, tensor in self._targets
        ):
            raise ConfigError(
                f"views do not fit the module: missing {sorted(self._keys - set(views))}, "
                f"unknown {sorted(set(views) - self._keys)}, or a shape or dtype differs"
            )
        for key, tensor in self._targets:
            tensor.data = views[key]


def _state_tensors(module: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """Parameters and persistent buffers by state-dict key (tied weights once per key)."""
    state_keys = set(module.state_dict())
    for key, parameter in module.named_parameters(remove_duplicate=False):
        if key in state_keys:
            yield key, parameter
    for key, buffer in module.named_buffers(remove_duplicate=False):
        if key in state_keys:
            yield key, buffer


def _dtype_name(key: str, value: object) -> str:
    if isinstance(value, torch.Tensor):
        try:
            return str(torch.empty(0, dtype=value.dtype).numpy().dtype.name)
        except (TypeError, RuntimeError) as exc:
            raise ConfigError(
                f"state entry {key!r} has dtype {value.dtype} (no numpy twin)"
            ) from exc
    if isinstance(value, np.ndarray):
        return str(value.dtype.name)
    raise ConfigError(f"state entry {key!r} is a {type(value).__name__}, not a tensor")


def _aligned(nbytes: int) -> int:
    return -(-nbytes // _ALIGN) * _ALIGN


def _attach(name: str) -> shared_memory.SharedMemory:
    """Attach to a segment made by this process's parent.

    Children started by :mod:`multiprocessing` share their parent's resource tracker, so
    registering the name again is harmless, and if every process of the run is killed the
    tracker still removes the segment.
    """
    return shared_memory.SharedMemory(name=name)
