"""Federated per-channel statistics over a folder of image or array files, batched.

:class:`FileStatistics` is a :class:`~fedloom.protocols._batched.BatchedProtocol`:

- initial setup: the modeller sends the channel count and the statistics to compute; the pod
  checks that they are the ones the task it accepted (and keys its records on) asked for,
  and that its images load with that many channels;
- per batch: each file's pixels (``(h, w, channels)``, or ``(h, w)`` for one channel) are
  added to a float64 count, per-channel sum and sum of squares; only the batch id leaves the
  pod (EVALUATION_RESULTS), never a value, a row or a file name;
- final reduce: every batch's sums become ``files``, ``count`` (values per channel) and the
  per-channel ``mean`` and population ``std``, sent once in BATCHES_COMPLETE("TASK_COMPLETE")
  with the number of files that could not be used. A pod whose statistics would cover fewer
  files than its ``min_rows`` releases nothing (TASK_ABORT ``PRIVACY_THRESHOLD``).

The modeller pools the pods exactly (:func:`pool_statistics`). Files count as processed (for
``run_on_new_data_only``) only once their statistics were released.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np

from fedloom.datasources import FileRecord
from fedloom.errors import (
    ConfigError,
    DataError,
    PodResponseError,
    ProtocolError,
    SchemaMismatchError,
)
from fedloom.protocols._base import WorkerContext, check_keys, register_protocol
from fedloom.protocols._batched import BatchedProtocol, image_loader_options
from fedloom.protocols._batched_parts import (
    NO_NEW_DATA,
    BatchCollector,
    BatchOutput,
    BatchWorker,
    SetupValues,
)
from fedloom.store import FailedFile

STATISTICS = ("mean", "std")
"""The statistics a task may ask for (the count is always sent: pooling needs it)."""
MAX_CHANNELS = 1024
_IMAGE_CHANNELS = {"RGB": 3, "L": 1}


@dataclass(frozen=True)
class ChannelStatistics:
    """Per-channel statistics of a set of files.

    Attributes:
        files: how many files they cover.
        count: how many values per channel (pixels).
        mean: the per-channel mean, if asked for.
        std: the per-channel population standard deviation (``ddof=0``), if asked for.
    """

    files: int
    count: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def to_body(self) -> dict[str, Any]:
        """A msgpack-able map of the statistics (no ``None`` entries)."""
        body: dict[str, Any] = {"files": self.files, "count": self.count}
        if self.mean is not None:
            body["mean"] = list(self.mean)
        if self.std is not None:
            body["std"] = list(self.std)
        return body

    @classmethod
    def from_body(cls, body: object, channels: int, statistics: Sequence[str]) -> Self:
        """Rebuild a pod's statistics from its message, checking every field.

        Raises:
            ProtocolError: not a map with ``files`` and ``count`` (integers >= 1) and a list
                of ``channels`` finite numbers for each of ``statistics`` (``std`` >= 0).
        """
        if not isinstance(body, dict):
            raise ProtocolError("file statistics must be a map")
        sizes = {}
        for key in ("files", "count"):
            value = body.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ProtocolError(f"file statistics {key!r} must be an integer >= 1")
            sizes[key] = value
        lists: dict[str, tuple[float, ...] | None] = {"mean": None, "std": None}
        for key in statistics:
            lists[key] = _numbers(body.get(key), key, channels)
        if lists["std"] is not None and min(lists["std"]) < 0:
            raise ProtocolError("file statistics 'std' must not be negative")
        return cls(sizes["files"], sizes["count"], lists["mean"], lists["std"])


def _numbers(value: object, key: str, channels: int) -> tuple[float, ...]:
    if not isinstance(value, list) or len(value) != channels:
        raise ProtocolError(f"file statistics {key!r} must be a list of {channels} numbers")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        raise ProtocolError(f"file statistics {key!r} must hold numbers only")
    numbers = tuple(float(v) for v in value)
    if not all(math.isfinite(v) for v in numbers):
        raise ProtocolError(f"file statistics {key!r} must be finite")
    return numbers


def pool_statistics(parts: Sequence[ChannelStatistics]) -> ChannelStatistics:
    """The exact statistics of the union of ``parts`` (disjoint sets of files).

    The pooled mean weighs each part's mean by its count; the pooled variance adds each
    part's variance and its mean's squared distance to the pooled mean, weighted by count.
    A statistic is pooled only when every part has it (``std`` also needs ``mean``).

    Raises:
        ConfigError: ``parts`` is empty or their channel counts differ.
    """
    if not parts:
        raise ConfigError("there are no statistics to pool")
    lengths = {len(v) for part in parts for v in (part.mean, part.std) if v is not None}
    if len(lengths) > 1:
        raise ConfigError(f"the statistics to pool have different channel counts {sorted(lengths)}")
    files = sum(part.files for part in parts)
    count = sum(part.count for part in parts)
    weights = np.array([part.count for part in parts], dtype=np.float64) / count
    if any(part.mean is None for part in parts):
        return ChannelStatistics(files, count)
    means = np.array([part.mean for part in parts], dtype=np.float64)
    mean = weights @ means
    if any(part.std is None for part in parts):
        return ChannelStatistics(files, count, tuple(mean.tolist()))
    stds = np.array([part.std for part in parts], dtype=np.float64)
    variance = weights @ (stds**2 + (means - mean) ** 2)
    return ChannelStatistics(files, count, tuple(mean.tolist()), tuple(np.sqrt(variance).tolist()))


@dataclass(frozen=True)
class FileStatisticsResult:
    """What the modeller collected.

    Attributes:
        pooled: the statistics over every file of every pod that delivered.
        pods: each delivering pod's own statistics.
        failed: how many files each delivering pod could not use (never which).
        batches: the last batch id each pod reported.
        no_new_data: the pods that had no file the task had not already processed
            (``run_on_new_data_only``): they completed with 0 files and are in no other
            field. If no pod delivered, ``pooled`` covers 0 files (no mean, no std).
    """

    pooled: ChannelStatistics
    pods: dict[str, ChannelStatistics]
    failed: dict[str, int]
    batches: dict[str, int]
    no_new_data: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Request:
    """What the worker computes: from the modeller's setup values."""

    channels: int
    statistics: tuple[str, ...]
    context: WorkerContext  # its release guard judges the files the statistics cover
    channels_first: bool = False
    """The pod's images load as ``(c, h, w)`` (image loader option ``channels_first``)."""


@dataclass(frozen=True)
class _Sums:
    """One batch's partial sums."""

    files: int
    count: int
    total: np.ndarray
    squares: np.ndarray


@register_protocol
@dataclass(frozen=True)
class FileStatistics(BatchedProtocol[_Request, _Sums, FileStatisticsResult]):
    """Per-channel count, mean and std of every pod's image/array files; see the module docstring.

    The batching settings are :class:`~fedloom.protocols._batched.BatchedProtocol`'s.

    Args:
        channels: the channel count of every file (3 for RGB images, 1 for ``mode="L"``).
        statistics: which of :data:`STATISTICS` to compute (``std`` needs ``mean``).

    Raises:
        ConfigError: (at construction) a setting has the wrong type or range.
    """

    name = "file_statistics"
    releases_per_batch: ClassVar[bool] = False
    sends_file_names: ClassVar[bool] = False

    channels: int = 3
    statistics: tuple[str, ...] = STATISTICS

    def __post_init__(self) -> None:
        super().__post_init__()
        channels = self.channels
        if isinstance(channels, bool) or not isinstance(channels, int):
            raise ConfigError(f"file_statistics.channels must be an integer in 1..{MAX_CHANNELS}")
        if not 1 <= channels <= MAX_CHANNELS:
            raise ConfigError(f"file_statistics.channels must be an integer in 1..{MAX_CHANNELS}")
        stats = self.statistics
        if (
            not isinstance(stats, tuple)
            or not stats
            or len(set(stats)) != len(stats)
            or any(s not in STATISTICS for s in stats)
        ):
            raise ConfigError(
                f"file_statistics.statistics must list some of {list(STATISTICS)} once each, "
                f"got {stats!r}"
            )
        if "std" in stats and "mean" not in stats:
            raise ConfigError(
                "file_statistics.statistics: 'std' needs 'mean' too (pooling the pods' "
                "standard deviations needs their means)"
            )

    def to_config(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "statistics": list(self.statistics),
            **self.batch_config(),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        optional = set(cls.__dataclass_fields__)
        check_keys("file_statistics", config, set(), optional)
        values = {key: config[key] for key in optional if key in config}
        if "statistics" in values:
            stats = values["statistics"]
            if not isinstance(stats, list | tuple):
                raise ConfigError("file_statistics.statistics must be a list")
            values["statistics"] = tuple(stats)
        return cls(**values)

    def summarise(self, result: Any) -> dict[str, Any]:
        if not isinstance(result, FileStatisticsResult):
            return {}
        summary: dict[str, Any] = {
            "files": {pod: stats.files for pod, stats in result.pods.items()},
            "failed": dict(result.failed),
            "pooled": result.pooled.to_body(),
        }
        if result.no_new_data:
            summary["files"].update(dict.fromkeys(result.no_new_data, 0))
            summary[NO_NEW_DATA] = list(result.no_new_data)
        return summary

    # --- modeller -----------------------------------------------------------------------

    def setup_values(self) -> SetupValues:
        return SetupValues({"channels": self.channels, "statistics": list(self.statistics)})

    def collector(self, pods: Sequence[str]) -> BatchCollector[FileStatisticsResult]:
        return _Collector(self, pods)

    # --- worker ---------------------------------------------------------------------------

    async def initial_setup(
        self, body: dict[str, Any], tensors: Mapping[str, np.ndarray], worker: BatchWorker
    ) -> _Request:
        """The request to compute, from the modeller's setup values.

        Raises:
            ProtocolError: the setup values are malformed or not what the task asked for.
            SchemaMismatchError: the pod's images load with another channel count.
        """
        if set(body) != {"channels", "statistics"} or tensors:
            raise ProtocolError("the file statistics setup step needs 'channels' and 'statistics'")
        asked = {"channels": body["channels"], "statistics": body["statistics"]}
        agreed = {"channels": self.channels, "statistics": list(self.statistics)}
        if asked != agreed:
            raise ProtocolError(
                f"the modeller's setup step asks for {asked}, but the task the pod accepted "
                f"asks for {agreed}; send the task again"
            )
        options = image_loader_options(worker.source)
        if options is not None:
            mode = str(options.get("mode", "RGB"))
            loaded = _IMAGE_CHANNELS.get(mode)
            if loaded is not None and loaded != self.channels:
                raise SchemaMismatchError(
                    f"this pod's images load as {mode} ({loaded} channels), but the task asks "
                    f"for {self.channels}; ask for channels={loaded}"
                )
        channels_first = options is not None and options.get("channels_first") is True
        return _Request(self.channels, self.statistics, worker.context, channels_first)

    async def process_batch(
        self, state: _Request, loaded: list[tuple[FileRecord, Any]], batch_id: int
    ) -> BatchOutput[_Sums]:
        return await asyncio.to_thread(_batch_sums, loaded, state.channels, state.channels_first)

    async def final_reduce(
        self, state: _Request, values: list[_Sums], failed: Mapping[str, FailedFile]
    ) -> dict[str, Any]:
        """Runs after the batched flow's release guard (at least ``min_rows`` files)."""
        files = sum(part.files for part in values)
        count = sum(part.count for part in values)
        total = np.sum([part.total for part in values], axis=0)
        squares = np.sum([part.squares for part in values], axis=0)
        mean = total / count
        # sums of squares can round a tiny variance below zero
        std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
        stats = ChannelStatistics(
            files,
            count,
            tuple(mean.tolist()) if "mean" in state.statistics else None,
            tuple(std.tolist()) if "std" in state.statistics else None,
        )
        return {"statistics": stats.to_body(), "failed": len(failed)}


def _batch_sums(
    loaded: list[tuple[FileRecord, Any]], channels: int, channels_first: bool = False
) -> BatchOutput[_Sums]:
    """Add up each usable file; the others are file-level failures (nothing is sent).

    ``channels_first``: the image loader gave ``(c, h, w)``, not ``(h, w, c)``.
    """
    done: list[FileRecord] = []
    failed: dict[str, BaseException] = {}
    count = 0
    total = np.zeros(channels, dtype=np.float64)
    squares = np.zeros(channels, dtype=np.float64)
    for record, value in loaded:
        try:
            pixels = _pixels(value, channels, channels_first)
        except DataError as exc:
            failed[record.name] = exc
            continue
        done.append(record)
        count += pixels.shape[0]
        total += pixels.sum(axis=0)
        squares += np.square(pixels).sum(axis=0)
    return BatchOutput(done, _Sums(len(done), count, total, squares), {}, failed=failed)


def _pixels(value: object, channels: int, channels_first: bool = False) -> np.ndarray:
    """One file's values as float64 ``(pixels, channels)``.

    ``channels_first``: a 3-D value is ``(channels, h, w)``.

    Raises:
        SchemaMismatchError: not a numeric array of ``(h, w, channels)`` (or ``(h, w)``).
        DataError: the array is empty or holds NaN or Inf.
    """
    if not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.number):
        raise SchemaMismatchError(
            f"file statistics need numeric arrays (the image loader), got {type(value).__name__}"
        )
    if value.ndim == 2 and channels == 1:
        value = value[..., np.newaxis]
    elif value.ndim == 3 and channels_first:
        value = np.moveaxis(value, 0, -1)
    if value.ndim < 2 or value.shape[-1] != channels:
        raise SchemaMismatchError(
            f"a file's values have shape {value.shape}; the task asks for {channels} channels "
            "on the last axis"
        )
    pixels = value.reshape(-1, channels).astype(np.float64)
    if pixels.shape[0] == 0:
        raise DataError("the file has no values")
    if not np.isfinite(pixels).all():
        raise DataError("the file's values hold NaN or Inf")
    return pixels


class _Collector(BatchCollector[FileStatisticsResult]):
    """Each pod's statistics at its end; the pooled ones once every pod is done."""

    def __init__(self, protocol: FileStatistics, pods: Sequence[str]) -> None:
        self.channels = protocol.channels
        self.statistics = protocol.statistics
        self.pods: dict[str, ChannelStatistics] = {}
        self.failed: dict[str, int] = {}
        self.batches: dict[str, int] = dict.fromkeys(pods, 0)
        self.no_new_data: list[str] = []

    def on_batch(self, pod: str, body: dict[str, Any], tensors: Mapping[str, np.ndarray]) -> None:
        batch = body.get("batch")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ProtocolError("an EVALUATION_RESULTS body needs a batch id >= 1")
        self.batches[pod] = max(self.batches[pod], batch)

    def on_finish(self, pod: str, body: dict[str, Any], tensors: Mapping[str, np.ndarray]) -> None:
        stats = ChannelStatistics.from_body(body.get("statistics"), self.channels, self.statistics)
        failed = body.get("failed")
        if isinstance(failed, bool) or not isinstance(failed, int) or failed < 0:
            raise ProtocolError("file statistics 'failed' must be an integer >= 0")
        self.pods[pod] = stats
        self.failed[pod] = failed

    def on_no_new_data(self, pod: str) -> None:
        self.no_new_data.append(pod)

    def result(self, active: Sequence[str], aborted: Mapping[str, str]) -> FileStatisticsResult:
        """The task's result: the statistics of the pods that delivered them.

        Raises:
            PodResponseError: no pod delivered statistics or had nothing new (naming why
                each left).
        """
        delivered = {pod: stats for pod, stats in sorted(self.pods.items()) if pod in active}
        nothing_new = tuple(sorted(pod for pod in self.no_new_data if pod in active))
        if not delivered and not nothing_new:
            raise PodResponseError("file_statistics: no pod delivered statistics", dict(aborted))
        return FileStatisticsResult(
            pooled=pool_statistics(list(delivered.values()))
            if delivered
            else ChannelStatistics(0, 0),
            pods=delivered,
            failed={pod: self.failed[pod] for pod in delivered},
            batches=self.batches,
            no_new_data=nothing_new,
        )
