"""Move a torch module's state to and from named numpy arrays.

Named numpy arrays are what fedloom sends over the wire and aggregates; torch stays on the
two ends. :func:`load_arrays` is strict: it checks every key, shape, dtype and value
before it changes anything, so a bad state leaves the module as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from fedloom.errors import ConfigError

__all__ = ["load_arrays", "state_to_arrays"]

Array = npt.NDArray[Any]
_MAX_KEYS_IN_MESSAGE = 5


def _name_keys(keys: Iterable[object]) -> str:
    names = sorted(repr(key) for key in keys)
    shown = ", ".join(names[:_MAX_KEYS_IN_MESSAGE])
    more = len(names) - _MAX_KEYS_IN_MESSAGE
    return f"{shown} and {more} more" if more > 0 else shown


def _numpy_dtype(key: str, dtype: torch.dtype) -> np.dtype[Any]:
    try:
        return torch.empty(0, dtype=dtype).numpy().dtype
    except (TypeError, RuntimeError) as exc:
        raise ConfigError(
            f"state entry {key!r} has dtype {dtype}, which has no numpy equivalent; "
            "convert the module (for example module.float()) first"
        ) from exc


def _tensor_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for key, value in module.state_dict().items():
        if not isinstance(value, torch.Tensor):
            raise ConfigError(
                f"state entry {key!r} is a {type(value).__name__}, not a tensor; "
                "modules with extra (non-tensor) state are not supported"
            )
        state[key] = value
    return state


def state_to_arrays(module: torch.nn.Module) -> dict[str, Array]:
    """The module's ``state_dict`` as named numpy arrays.

    Each array is a detached, contiguous CPU copy: changing it never changes the module.

    Raises:
        ConfigError: a state entry is not a tensor, or its dtype has no numpy equivalent
            (for example ``bfloat16``).
    """
    arrays: dict[str, Array] = {}
    for key, tensor in _tensor_state(module).items():
        _numpy_dtype(key, tensor.dtype)
        plain = tensor.detach().to("cpu").resolve_conj().resolve_neg()
        arrays[key] = np.array(plain.numpy(), copy=True, order="C")
    return arrays


def load_arrays(module: torch.nn.Module, arrays: Mapping[str, Array]) -> None:
    """Copy ``arrays`` into the module's parameters and buffers (strictly).

    ``arrays`` may be read-only views (for example decoded from a message): they are
    copied, never aliased. Nothing is loaded unless every entry passes the checks.

    Raises:
        ConfigError: unknown or missing keys, a value that is not a numpy array, a shape
            or dtype that differs from the module's, or NaN/Inf in a float array; the
            message names the key.
    """
    state = _tensor_state(module)
    unknown = [key for key in arrays if key not in state]
    if unknown:
        raise ConfigError(f"unknown state keys for this model: {_name_keys(unknown)}")
    missing = [key for key in state if key not in arrays]
    if missing:
        raise ConfigError(f"missing state keys for this model: {_name_keys(missing)}")
    tensors: dict[str, torch.Tensor] = {}
    for key, current in state.items():
        array = arrays[key]
        expected = _numpy_dtype(key, current.dtype)
        if not isinstance(array, np.ndarray):
            raise ConfigError(f"state entry {key!r} is a {type(array).__name__}, not a numpy array")
        if array.dtype != expected:
            raise ConfigError(f"state entry {key!r} has dtype {array.dtype}, expected {expected}")
        if array.shape != tuple(current.shape):
            raise ConfigError(
                f"state entry {key!r} has shape {array.shape}, expected {tuple(current.shape)}"
            )
        if array.dtype.kind in "fc" and not np.isfinite(array).all():
            raise ConfigError(f"state entry {key!r} contains NaN or Inf")
        tensors[key] = torch.from_numpy(np.array(array, copy=True, order="C"))
    module.load_state_dict(tensors, strict=True)
