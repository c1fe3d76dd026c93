"""Approved model files: a model's weights from a safetensors file the pod has approved.

The file's SHA-256 must be on the pod's list (:func:`load_approved_model`), and it is
never unpickled.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Collection
from pathlib import Path

import safetensors.numpy
from torch import nn

from fedloom.algorithms.ml import ModelSpec, build_model, load_arrays
from fedloom.errors import AccessDeniedError, ConfigError

__all__ = ["load_approved_model", "load_approved_model_bytes", "load_model_bytes"]

_SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")


def load_approved_model(path: Path, approved_sha256: Collection[str], spec: ModelSpec) -> nn.Module:
    """Build ``spec``'s model and load the weights of an approved safetensors file.

    The file's SHA-256 (of the bytes that are then loaded) must be in
    ``approved_sha256``; the weights are read with safetensors, never unpickled.

    Raises:
        AccessDeniedError: the file's SHA-256 is not approved (the message names it).
        ConfigError: an approved hash is not 64 hex digits, the file cannot be read or is
            not a safetensors file, or its weights do not fit the model.
        UnknownNameError: ``spec.name`` is not a registered model.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read model file {path}: {exc}") from exc
    return load_approved_model_bytes(data, approved_sha256, spec, name=Path(path).name)


def load_approved_model_bytes(
    data: bytes, approved_sha256: Collection[str], spec: ModelSpec, *, name: str = "model file"
) -> nn.Module:
    """:func:`load_approved_model` for a file's bytes (e.g. as a modeller sent them).

    Raises:
        AccessDeniedError, ConfigError, UnknownNameError: as :func:`load_approved_model`.
    """
    approved = set()
    for digest in approved_sha256:
        if not isinstance(digest, str) or not _SHA256_PATTERN.fullmatch(digest.lower()):
            raise ConfigError(f"approved model hash {digest!r} is not 64 hex digits")
        approved.add(digest.lower())
    digest = hashlib.sha256(data).hexdigest()
    if digest not in approved:
        raise AccessDeniedError(
            f"{name} has SHA-256 {digest}, which this pod has not "
            "approved; add the hash to the pod's approved model hashes to allow it"
        )
    return load_model_bytes(data, spec, name=name)


def load_model_bytes(data: bytes, spec: ModelSpec, *, name: str = "model file") -> nn.Module:
    """``spec``'s model with the weights of a safetensors file's bytes, in eval mode.

    Raises:
        ConfigError: the bytes are not a safetensors file, or its arrays do not fit the
            model (a key missing or unknown, another shape or dtype: named).
        UnknownNameError: ``spec`` names no registered model.
    """
    try:
        arrays = safetensors.numpy.load(data)
    except Exception as exc:  # safetensors raises its own untyped errors
        raise ConfigError(f"{name} is not a valid safetensors file: {exc}") from exc
    model = build_model(spec)
    try:
        load_arrays(model, arrays)
    except ConfigError as exc:
        raise ConfigError(f"{name} does not fit model {spec.name!r}: {exc}") from exc
    model.eval()
    return model
