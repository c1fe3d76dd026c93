"""Strict parsing of a frame's msgpack header and validation of its tensor table."""

from __future__ import annotations

from typing import Final, NamedTuple

import msgpack
import numpy as np

from fedloom.errors import WireError
from fedloom.wire._checks import (
    ALIGNMENT,
    ALLOWED_DTYPES,
    DTYPES,
    MAX_TENSOR_NDIM,
    align,
    check_tensor_name,
    type_name,
)

HEADER_KEYS: Final = frozenset(
    {"type", "sender", "recipient", "task_id", "sequence", "timestamp", "body", "tensors"}
)
_TENSOR_KEYS: Final = frozenset({"name", "dtype", "shape", "offset", "nbytes"})
_MAX_EXTENT: Final = 2**63 - 1


class TensorEntry(NamedTuple):
    """One validated row of the tensor table; ``offset`` counts from the blob's start."""

    name: str
    dtype: np.dtype[np.generic]
    shape: tuple[int, ...]
    size: int
    offset: int
    nbytes: int


def _refuse_ext(code: int, data: bytes) -> object:
    raise WireError(f"msgpack extension type {code} is not allowed")


def _pairs_to_dict(pairs: list[tuple[object, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, value in pairs:
        if type(key) is not str:
            raise WireError(f"map keys must be str, not {type_name(key)}")
        if key in result:
            raise WireError(f"duplicate map key {key[:64]!r}")
        result[key] = value
    return result


def unpack_header(raw: memoryview) -> object:
    """The msgpack value in ``raw``, read strictly.

    Only nil, bool, int, float, str, bin, array and map (with unique str keys) are accepted,
    each within the size of ``raw``.

    Raises:
        WireError: ``raw`` is not exactly one such msgpack value.
    """
    limit = len(raw)
    try:
        return msgpack.unpackb(
            raw,
            raw=False,
            use_list=True,
            strict_map_key=True,
            object_pairs_hook=_pairs_to_dict,
            ext_hook=_refuse_ext,
            max_str_len=limit,
            max_bin_len=limit,
            max_array_len=limit,
            max_map_len=limit,
            max_ext_len=0,
        )
    except WireError:
        raise
    except Exception as exc:  # msgpack's errors: ValueError, StackError, ExtraData, ...
        raise WireError(f"the header is not valid msgpack ({type(exc).__name__})") from exc


def read_tensor_table(table: object, blob_len: int) -> list[TensorEntry]:
    """The validated entries of a decoded tensor table.

    Raises:
        WireError: ``table`` is not a list of maps of exactly the expected keys; or an entry
            has a bad or duplicate name, a dtype outside ``ALLOWED_DTYPES``, a shape that is
            not a list of at most 32 non-negative ints (or one numpy cannot represent), an
            ``nbytes`` other than its shape's size, or an unaligned or out-of-blob offset.
    """
    if type(table) is not list:
        raise WireError(f"the tensor table must be a list, not {type_name(table)}")
    entries: list[TensorEntry] = []
    names: set[str] = set()
    for item in table:
        if type(item) is not dict or item.keys() != _TENSOR_KEYS:
            raise WireError(f"a tensor table entry must be a map of {sorted(_TENSOR_KEYS)}")
        name = check_tensor_name(item["name"])
        if name in names:
            raise WireError(f"duplicate tensor name {name[:64]!r}")
        names.add(name)
        dtype_name = item["dtype"]
        if type(dtype_name) is not str or dtype_name not in ALLOWED_DTYPES:
            raise WireError(f"tensor {name!r} has a dtype that may not travel")
        dtype = DTYPES[dtype_name]
        shape = item["shape"]
        if type(shape) is not list or len(shape) > MAX_TENSOR_NDIM:
            raise WireError(f"tensor {name!r}: shape must be a list of <= {MAX_TENSOR_NDIM} ints")
        count, extent = 1, dtype.itemsize
        for dim in shape:
            if type(dim) is not int or dim < 0:
                raise WireError(f"tensor {name!r}: dimensions must be non-negative ints")
            count *= dim  # Python ints: huge dimensions cannot overflow
            extent *= max(dim, 1)
        if extent > _MAX_EXTENT:  # numpy refuses such shapes, even when one dimension is 0
            raise WireError(f"tensor {name!r}: shape is too large for numpy")
        offset, nbytes = item["offset"], item["nbytes"]
        if type(offset) is not int or type(nbytes) is not int or offset < 0 or nbytes < 0:
            raise WireError(f"tensor {name!r}: offset and nbytes must be non-negative ints")
        if nbytes != count * dtype.itemsize:
            raise WireError(f"tensor {name!r}: nbytes {nbytes} does not match shape and dtype")
        if offset % ALIGNMENT:
            raise WireError(f"tensor {name!r}: offset {offset} is not 64-byte aligned")
        if offset + nbytes > blob_len:
            raise WireError(f"tensor {name!r} runs past the end of the blob")
        entries.append(TensorEntry(name, dtype, tuple(shape), count, offset, nbytes))
    return entries


def check_layout(
    view: memoryview, blob_start: int, blob_len: int, entries: list[TensorEntry]
) -> None:
    """Check that the tensors tile the blob: in offset order, zero padding, nothing after.

    Raises:
        WireError: two tensors overlap, a tensor is not at the first aligned offset after
            the one before it, padding bytes are not zero, or the blob runs past its tensors.
    """
    end = 0
    for entry in sorted((e for e in entries if e.nbytes), key=lambda e: e.offset):
        if entry.offset < end:
            raise WireError(f"tensor {entry.name!r} overlaps the tensor before it")
        if entry.offset != align(end):
            raise WireError(f"unused bytes in the blob before tensor {entry.name!r}")
        if any(view[blob_start + end : blob_start + entry.offset]):
            raise WireError(f"non-zero padding before tensor {entry.name!r}")
        end = entry.offset + entry.nbytes
    if end != blob_len:
        raise WireError(f"the blob is {blob_len} bytes but its tensors end at {end}")
