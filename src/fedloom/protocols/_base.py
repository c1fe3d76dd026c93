"""TaskProtocol base class, run contexts and the closed protocol registry.

A protocol is written once against :class:`ModellerMailbox` and :class:`WorkerMailbox`
and runs unchanged in memory, over gRPC, or in simulation. It is a frozen dataclass whose
fields are its JSON config: :meth:`TaskProtocol.dump` gives ``{"protocol": name, "config":
{...}}`` and :func:`load_protocol` rebuilds it on a pod from exactly that, through the
closed :data:`PROTOCOLS` registry (never an import of a name the pod was sent).
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

import numpy as np
import numpy.typing as npt

from fedloom._hooks import HookSet, default_worker_hooks
from fedloom._registry import Registry
from fedloom.datasources import Datasource
from fedloom.errors import (
    ConfigError,
    FedloomError,
    PrivacyThresholdError,
    StoreError,
)
from fedloom.protocols._ledger import Ledger
from fedloom.session import ModellerMailbox, WorkerMailbox
from fedloom.store import CheckpointRetention, ExperimentStore, RoundRecord
from fedloom.store._retention import KEEP_ALL

DEFAULT_MIN_ROWS = 10
"""Pods refuse to release results computed over fewer rows than this (privacy threshold)."""


class ReleaseGuard(Enum):
    """Where a protocol's results pass the pod's minimum-rows threshold.

    Every protocol declares one (:attr:`TaskProtocol.release_guard`); the default guards the
    whole dataset, so a protocol that says nothing cannot forget the threshold.
    """

    WHOLE_DATASET = "whole_dataset"
    """:meth:`TaskProtocol.serve_worker` checks the datasource's size before the worker runs."""
    AT_RELEASE = "at_release"
    """The conversation calls :meth:`WorkerContext.release` with what the result covers
    just before it leaves: the batched flow (:class:`~fedloom.protocols.BatchedProtocol`)
    does, with the files processed, before its final reduce step; only then is the
    count known (a run on new data only may release nothing at all)."""
    PER_RECORD = "per_record"
    """Each output is about one record the modeller named (inference's predictions): no
    aggregate threshold applies; the pod's usage limits bound what leaves instead."""


@dataclass(frozen=True)
class WorkerContext:
    """What a protocol's worker side may use on the pod.

    ``hooks`` run at the worker's life-cycle points (see :mod:`fedloom._hooks`). Left out,
    they are the pod default, :data:`~fedloom._hooks.DEFAULT_WORKER_HOOKS` (progress to the
    modeller); ``HookSet()`` runs none and costs nothing.
    """

    pod: str
    datasource: Datasource
    min_rows: int = DEFAULT_MIN_ROWS
    hooks: HookSet = field(default_factory=default_worker_hooks)
    ledger: Ledger | None = None
    """The pod's processed/failed files and usage (None: the task keeps none)."""
    outputs: Path | None = None
    """The pod's folder for task outputs (reports, images); None: the pod keeps none."""
    released: list[int] = field(default_factory=list, compare=False, repr=False)
    """The counts :meth:`release` let through, in order (the guard's own record)."""

    def release(self, count: int, unit: str = "rows") -> None:
        """The pod's one release guard: refuse a result over fewer than :attr:`min_rows` rows.

        ``count`` is of rows, or files, or whatever ``unit`` the result counts.

        :meth:`TaskProtocol.serve_worker` calls it with the datasource's size before any
        protocol's worker runs, so a new protocol cannot forget it; a protocol whose
        result covers less than the whole datasource (files that failed, a filter) calls
        it again with what its result covers.

        Raises:
            PrivacyThresholdError: ``count < min_rows``.
        """
        if count < self.min_rows:
            raise PrivacyThresholdError(
                f"the result would cover {count} {unit}; this pod releases nothing "
                f"over fewer than {self.min_rows}"
            )
        self.released.append(count)


RoundCallback = Callable[[Mapping[str, Any]], None]


@dataclass(frozen=True, eq=False)
class ResumePoint:
    """Where a crashed or failed experiment goes on: built by :func:`resume_experiment`.

    ``next_round`` is the first round still to run. ``parameters`` are the global model
    arrays after round ``next_round - 1`` (its checkpoint), or None when ``next_round`` is
    0: no round was complete and the protocol starts from scratch. ``rounds`` are the
    metrics of the rounds already done, ordered by round index, all before ``next_round``.
    Points compare by identity (they hold arrays).

    Raises (at construction):
        ConfigError: ``next_round`` is not an int >= 0, ``parameters`` is None although
            ``next_round`` > 0 (or given although it is 0), a parameter is not a numpy
            array, or a round is not a :class:`~fedloom.store.RoundRecord` before
            ``next_round`` in increasing order.
    """

    next_round: int
    parameters: dict[str, npt.NDArray[Any]] | None = None
    rounds: tuple[RoundRecord, ...] = ()

    def __post_init__(self) -> None:
        positive_int("resume.next_round", self.next_round, minimum=0)
        if (self.parameters is None) != (self.next_round == 0):
            raise ConfigError(
                "resume.parameters must be the model after round next_round - 1, and None "
                f"only when next_round is 0; got next_round={self.next_round} with "
                f"{'no' if self.parameters is None else 'some'} parameters"
            )
        for name, array in (self.parameters or {}).items():
            if not isinstance(name, str) or not isinstance(array, np.ndarray):
                raise ConfigError(f"resume.parameters[{name!r}] must be a numpy array")
        previous = -1
        for record in self.rounds:
            if not isinstance(record, RoundRecord):
                raise ConfigError(
                    f"resume.rounds must hold RoundRecords, got a {type(record).__name__}"
                )
            if not previous < record.round_index < self.next_round:
                raise ConfigError(
                    f"resume.rounds must be in increasing order and before round "
                    f"{self.next_round}, got round {record.round_index} after {previous}"
                )
            previous = record.round_index


def resume_experiment(store: ExperimentStore, experiment_id: str) -> ResumePoint:
    """Reopen a crashed or failed experiment in ``store`` and return where it goes on.

    The last round with both its metrics and its checkpoint is the resume point: its
    checkpoint is loaded (and verified) first, then
    :meth:`~fedloom.store.ExperimentStore.reopen_experiment` drops the half-written
    rounds after it and sets the experiment ``"running"`` again. Put the result in
    :attr:`ModellerContext.resume` together with the same ``store`` and
    ``experiment_id``, and run a protocol whose :attr:`TaskProtocol.resumable` is True; it
    records the remaining rounds into the same experiment, which the caller finishes as
    usual (``"failed"`` again if the resumed run fails, so it can be resumed once more).

    Raises:
        NotFoundError: no experiment has this id; nothing is written.
        StoreError: the experiment is ``"completed"``, the checkpoint of its last complete
            round is missing or corrupted (nothing is written then), the experiment
            changed while it was being reopened, or the store is closed or failed.
    """
    record = store.get_experiment(experiment_id)
    last = record.last_complete_round
    parameters = None
    if last is not None and record.status != "completed":  # reopen refuses that one
        parameters = store.load_checkpoint(experiment_id, last)
    reopened = store.reopen_experiment(experiment_id)
    if reopened.last_complete_round != last:
        raise StoreError(
            f"experiment {experiment_id} changed while it was being reopened (last complete "
            f"round {last}, now {reopened.last_complete_round}); is another modeller "
            "running it?"
        )
    if last is None:
        return ResumePoint(next_round=0)
    return ResumePoint(next_round=last + 1, parameters=parameters, rounds=tuple(reopened.rounds))


@dataclass
class ModellerContext:
    """What a protocol's modeller side may use: the experiment store and UI callbacks.

    ``resume``, when set, says where an interrupted experiment goes on (see
    :func:`resume_experiment`); only protocols with :attr:`TaskProtocol.resumable` honour it,
    and ``store``/``experiment_id`` should then name the experiment it came from.
    """

    store: ExperimentStore | None = None
    experiment_id: str | None = None
    on_round: RoundCallback | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    resume: ResumePoint | None = None
    checkpoints: CheckpointRetention = field(default_factory=CheckpointRetention)
    """Which round checkpoints :meth:`record_round` keeps (default: the last and the best
    by validation loss)."""
    _kept: dict[int, RoundRecord] | None = field(default=None, init=False, repr=False)
    """The rounds whose checkpoints are kept, read from the store once, then kept here."""

    def report_round(self, summary: Mapping[str, Any]) -> None:
        """Hand a finished round's summary to whoever watches the task (``on_round``)."""
        if self.on_round is not None:
            self.on_round(summary)

    def record_round(
        self,
        round_index: int,
        aggregated: Mapping[str, float],
        per_pod: Mapping[str, Mapping[str, float]],
        arrays: Mapping[str, npt.NDArray[Any]],
    ) -> None:
        """Record a finished round in the experiment: its metrics, then its checkpoint.

        Then drop the checkpoints :attr:`checkpoints` no longer keeps. Without a store
        nothing is recorded.

        The latest checkpoint is always kept, so the experiment can resume from it.

        Raises:
            ConfigError, StoreError: as the store's record_round / save_checkpoint.
        """
        if self.store is None or self.experiment_id is None:
            return
        self.store.record_round(self.experiment_id, round_index, aggregated, per_pod)
        self.store.save_checkpoint(self.experiment_id, round_index, arrays)
        if self.checkpoints.keep == KEEP_ALL:
            return
        if self._kept is None:  # once: a resumed experiment has rounds from before
            record = self.store.get_experiment(self.experiment_id)
            saved = {ref.round_index for ref in record.checkpoints}
            self._kept = {r.round_index: r for r in record.rounds if r.round_index in saved}
        else:
            self._kept[round_index] = RoundRecord(round_index, dict(aggregated), {}, 0.0)
        dropped = self.checkpoints.to_delete(list(self._kept.values()), self._kept)
        if dropped:
            self.store.delete_checkpoints(self.experiment_id, dropped)
            for index in dropped:
                del self._kept[index]


ResultT_co = TypeVar("ResultT_co", covariant=True)
"""What a protocol's modeller side returns (FedAvg: a FedAvgResult)."""


class TaskProtocol(ABC, Generic[ResultT_co]):
    """Base of every protocol. Subclasses are frozen dataclasses registered by name.

    A protocol is generic over its result: ``Modeller.run(FedAvg(...))`` is a
    ``TaskResult[FedAvgResult]``.
    """

    name: ClassVar[str]
    handles_start: ClassVar[bool] = False
    """True for protocols that run the start handshake themselves (the batched flow: the
    worker says it is ready with TASK_START, the modeller answers TASK_START once every pod
    is). Otherwise the modeller sends TASK_START right after the accepts and the pod waits
    for it before the worker side starts."""
    release_guard: ClassVar[ReleaseGuard] = ReleaseGuard.WHOLE_DATASET
    """Where this protocol's results pass the pod's minimum-rows threshold."""
    resumable: ClassVar[bool] = False
    """True for protocols whose :meth:`run_modeller` honours :attr:`ModellerContext.resume`
    (goes on from a :class:`ResumePoint` instead of starting over). A caller must not
    resume an experiment with a protocol where this is False: it would start from
    round 0 and record rounds the experiment already has."""

    @abstractmethod
    def to_config(self) -> dict[str, Any]:
        """The JSON-able config that :meth:`from_config` turns back into this protocol."""

    @classmethod
    @abstractmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        """Rebuild from :meth:`to_config` output.

        Raises:
            ConfigError: a key is unknown or missing, or a value has the wrong type or range.
        """

    @abstractmethod
    async def run_modeller(self, mailbox: ModellerMailbox, context: ModellerContext) -> ResultT_co:
        """The modeller's side of the conversation; returns the task's result."""

    @abstractmethod
    async def run_worker(
        self, mailbox: WorkerMailbox, context: WorkerContext
    ) -> dict[str, Any] | None:
        """The pod's side; returns when the modeller sends TASK_COMPLETE.

        Returns a JSON-able record of what the pod released (kept in the pod's store).
        """

    async def serve_worker(
        self, mailbox: WorkerMailbox, context: WorkerContext
    ) -> dict[str, Any] | None:
        """Run the release guard, then the protocol's worker side: what a pod calls.

        A pod never calls :meth:`run_worker` itself.

        Raises:
            PrivacyThresholdError: the datasource is smaller than the pod's threshold
                (see :meth:`WorkerContext.release`); the worker side never runs.
        """
        if self.release_guard is ReleaseGuard.WHOLE_DATASET:
            context.release(len(context.datasource))
        return await self.run_worker(mailbox, context)

    def algorithms(self) -> frozenset[str]:
        """Registered names of the code a pod runs for this task (models, algorithms).

        A pod whose policy lists allowed algorithms accepts the task only if it allows
        every one of these. Protocols whose pod side is fixed code return nothing.
        """
        return frozenset()

    def check_task(self) -> None:
        """Check, on the modeller and before any pod is asked, what needs no pod's data.

        :meth:`Modeller.run <fedloom.modeller.Modeller.run>` calls it first, so a task that
        cannot work (a model name that is not registered, a model config its factory
        refuses) fails at once and leaves no trace on the pods. Construction already
        checks the config's types and ranges; this checks what takes the registries or
        building something (e.g. the model). The default checks nothing more.

        Raises:
            UnknownNameError: a registered name the task uses is not registered here.
            ConfigError: a config the named code refuses.
        """
        return

    def summarise(self, result: Any) -> dict[str, Any]:
        """A JSON-able summary of :meth:`run_modeller`'s result for the experiment store."""
        return {}

    def dump(self) -> dict[str, Any]:
        """``{"protocol": name, "config": {...}}``, guaranteed JSON-serialisable."""
        spec = {"protocol": self.name, "config": self.to_config()}
        try:
            json.dumps(spec, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"protocol {self.name!r} config is not JSON: {exc}") from exc
        return spec


PROTOCOLS: Registry[type[TaskProtocol[Any]]] = Registry("protocol")


P = TypeVar("P", bound=type[TaskProtocol[Any]])


def register_protocol(cls: P) -> P:
    """Class decorator: register a protocol under its ``name``."""
    PROTOCOLS.add(cls.name, cls)
    return cls


def load_protocol(spec: object) -> TaskProtocol[Any]:
    """Rebuild a protocol from ``{"protocol": name, "config": {...}}``.

    Raises:
        UnknownNameError: the name is malformed (e.g. a dotted path) or not registered;
            nothing is imported.
        ConfigError: the spec or its config is malformed.
    """
    if not isinstance(spec, Mapping) or set(spec) != {"protocol", "config"}:
        raise ConfigError('a task spec must be a map with exactly "protocol" and "config"')
    cls = PROTOCOLS.get(spec["protocol"])
    config = spec["config"]
    if not isinstance(config, Mapping):
        raise ConfigError(f"the config of protocol {spec['protocol']!r} must be a map")
    try:
        return cls.from_config(config)
    except FedloomError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise ConfigError(f"invalid config for protocol {spec['protocol']!r}: {exc}") from exc


# --- strict config helpers shared by protocol configs -----------------------------------


def check_keys(
    where: str, config: Mapping[str, Any], required: set[str], optional: set[str]
) -> None:
    """Unknown or missing keys → ConfigError naming them."""
    keys = set(config)
    unknown = keys - required - optional
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(required | optional)}"
        )
    missing = required - keys
    if missing:
        raise ConfigError(f"{where}: missing key(s) {sorted(missing)}")


def positive_int(where: str, value: object, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def real_in(where: str, value: object, low: float, high: float, *, low_open: bool = False) -> float:
    """A finite real in [low, high] (or (low, high] with ``low_open``)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    if value > high or value < low or (low_open and value == low):
        bracket = "(" if low_open else "["
        raise ConfigError(f"{where} must be in {bracket}{low}, {high}], got {value!r}")
    return float(value)


def optional_timeout(where: str, value: object) -> float | None:
    if value is None:
        return None
    return real_in(where, value, 0.0, 7 * 24 * 3600.0, low_open=True)
