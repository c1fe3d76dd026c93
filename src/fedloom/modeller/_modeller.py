"""The modeller: sends a task to pods, runs the protocol's modeller side, records it.

The handshake is the same for every protocol: JOB_REQUEST to each pod; JOB_ACCEPT or
JOB_REJECT (typed reason) back; TASK_START to the pods that accepted; the protocol's
conversation; TASK_COMPLETE (or TASK_ABORT when the modeller side failed). A
:class:`~fedloom.session.RequestPolicy` governs every request of that exchange.
A run that is cancelled, in any phase, sends TASK_CANCEL instead and waits a bounded time
for each pod's TASK_ABORT(CANCELLED_BY_MODELLER) (:mod:`fedloom.modeller._cancel`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from fedloom._events import EventCallback, EventStream, Subscription
from fedloom.errors import ConfigError, ErrorReport, FedloomError, StoreError
from fedloom.modeller._accept import _accept, _request_job
from fedloom.modeller._cancel import (
    CANCEL_MESSAGE,
    TELL_PODS_SECONDS,
    TaskCancellation,
    _abort,
    cancel_pods,
)
from fedloom.modeller._keepalive import KeepAlive
from fedloom.modeller._live import TaskEvents
from fedloom.modeller._result import TaskResult
from fedloom.protocols import ModellerContext, RoundCallback, TaskProtocol, resume_experiment
from fedloom.session import Gathered, ModellerMailbox, RequestPolicy
from fedloom.store import CheckpointRetention, ExperimentStore
from fedloom.store._base import COMPLETED
from fedloom.store._retention import KEEP_LAST
from fedloom.transport import Mailbox, TaskRouter
from fedloom.wire import MessageType

logger = logging.getLogger(__name__)

R = TypeVar("R")

DEFAULT_ACCEPT_TIMEOUT = 30.0
"""Seconds the modeller waits for pods to accept or reject a task run without a policy."""

ExperimentCallback = Callable[[str], None]
"""Called with an experiment's id (see :meth:`Modeller.run`'s ``on_experiment``)."""


class Modeller:
    """The researcher's side; one instance per mailbox, any number of tasks.

    ``accept_timeout`` is how long pods have to accept a task run without a
    :class:`RequestPolicy`.

    A task is cancelled by cancelling the asyncio task that awaits :meth:`run` (``task.cancel()``,
    ``asyncio.timeout``, Ctrl-C under ``asyncio.run``) or with :meth:`cancel`.

    What its tasks do is published on ``events`` (a new
    :class:`~fedloom._events.EventStream` unless one is given): :meth:`subscribe` to follow
    every task of this modeller as it runs (each event names its task); the sequence is
    described in :mod:`fedloom.modeller._live`.
    """

    def __init__(
        self,
        mailbox: Mailbox,
        *,
        store: ExperimentStore | None = None,
        accept_timeout: float = DEFAULT_ACCEPT_TIMEOUT,
        events: EventStream | None = None,
    ) -> None:
        if not accept_timeout > 0:
            raise ConfigError(f"accept_timeout must be > 0, got {accept_timeout!r}")
        self.store = store
        self.events = events if events is not None else EventStream()
        self.accept_timeout = accept_timeout
        self._router = TaskRouter(mailbox)
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._cancel_requests: set[str] = set()
        self._cancellations: dict[str, TaskCancellation] = {}

    @property
    def identity(self) -> str:
        """The modeller's identity name (its mailbox's)."""
        return self._router.identity

    def subscribe(self, callback: EventCallback) -> Subscription:
        """Deliver the events of this modeller's tasks to ``callback``.

        They arrive on the event loop of :meth:`run` (see :meth:`EventStream.subscribe`).
        """
        return self.events.subscribe(callback)

    async def run(
        self,
        protocol: TaskProtocol[R],
        pods: Sequence[str],
        *,
        dataset: str = "default",
        name: str | None = None,
        policy: RequestPolicy | None = None,
        require_all: bool | None = None,
        resume: str | None = None,
        keep_checkpoints: str | int | CheckpointRetention = KEEP_LAST,
        on_experiment: ExperimentCallback | None = None,
    ) -> TaskResult[R]:
        """Run ``protocol`` on ``pods`` over their dataset ``dataset``.

        Args:
            protocol: the task: what each pod computes and how the modeller combines it.
            pods: the names of the pods asked to run it (distinct, at least one).
            dataset: which of each pod's datasets the task reads, by name.
            name: the experiment's name in the store (default: the protocol's name).
            policy: how every request of the task (the accept phase and each of the
                protocol's steps) is gathered: time-out, late pods, errors, how many
                replies are enough. A protocol's own time-out (``FedAvg.round_timeout``,
                ``Analytics.timeout``, ``ResultsOnly.timeout``), when set, wins for its
                requests. ``None`` keeps the behaviour of earlier releases: pods have
                ``accept_timeout`` seconds to accept, every pod must accept unless
                ``require_all=False``, later requests wait as long as the protocol's own
                time-out says (forever when unset) and drop the pods that stay silent.
            require_all: with a policy, replaces ``policy.require_all``; without one,
                whether every pod must accept the task (default True).
            resume: the id of an experiment in this modeller's store that stopped before
                its end (the modeller crashed, or the run failed): the run goes on from
                the last round that has both its metrics and its checkpoint, records into
                that experiment and finishes it. The protocol must be resumable and the
                same task as the experiment's (only ``rounds`` may differ, to extend it).
            keep_checkpoints: which round checkpoints the experiment keeps in the store:
                ``"last"`` (default: the latest, which a resume goes on from, and the best
                round's by validation loss), ``"all"``, the latest ``N`` (and the best), or
                a :class:`~fedloom.store.CheckpointRetention`.
            on_experiment: called with the experiment's id once the pods accepted and the
                experiment is created in (or reopened from) the store, e.g. to tell a
                person how to resume it should the run fail.

        Raises:
            ConfigError: no pods, duplicate pods, a protocol config that is not JSON or
                that :meth:`TaskProtocol.check_task` refuses (nothing is sent then), a
                ``policy`` that is not a :class:`RequestPolicy`, or a ``resume`` without a
                store, of a protocol that cannot resume, or of an experiment that ran
                another task.
            UnknownNameError: the task names a model or algorithm that is not registered
                here (nothing is sent).
            NotFoundError: ``resume`` names no experiment in the store.
            StoreError: the ``resume`` experiment has completed, or its last checkpoint is
                missing or damaged (nothing is sent to the pods then).
            PodResponseError: no pod accepted, or the request policy (or, without one,
                ``require_all``) stopped the task; ``failed_pods`` names the pods that
                rejected, aborted or did not answer, with the reason.
            FedloomError: whatever the protocol's modeller side raised (the pods are told
                with TASK_ABORT first).
            asyncio.CancelledError: the run was cancelled (see :meth:`cancel`). Whatever
                the phase (sending the request, waiting for accepts, running), every pod
                that may hold the task is sent TASK_CANCEL first, and the run waits up to
                ``TELL_PODS_SECONDS`` in all for each one's TASK_ABORT(CANCELLED_BY_MODELLER):
                the pod has stopped the task and freed its slot.
        """
        if not pods or len(set(pods)) != len(pods):
            raise ConfigError(f"pods must be a non-empty list of distinct names, got {list(pods)}")
        if policy is not None and not isinstance(policy, RequestPolicy):
            raise ConfigError(f"policy must be a RequestPolicy, got {type(policy).__name__}")
        if require_all is not None and not isinstance(require_all, bool):
            raise ConfigError(f"require_all must be true or false, got {require_all!r}")
        if policy is not None and require_all is not None:
            policy = replace(policy, require_all=require_all)
        spec = protocol.dump()
        protocol.check_task()  # a task that cannot work leaves no trace on the pods
        retention = CheckpointRetention.of(keep_checkpoints)
        if resume is not None:
            self._check_resume(protocol, spec, resume)
        self._router.start()
        started = time.monotonic()
        task_id = uuid.uuid4().hex
        events = TaskEvents(self.events, task_id)
        mailbox = ModellerMailbox(
            self._router,
            self._router.open_channel(task_id),
            pods,
            on_progress=events.status,
            policy=policy,
        )
        asked: list[str] = []
        current = asyncio.current_task()
        if current is not None:
            self._running[task_id] = current
        events.started(protocol.name, pods)
        try:
            result = await self._run(
                protocol,
                mailbox,
                spec=spec,
                asked=asked,
                started=started,
                dataset=dataset,
                name=name,
                require_all=require_all,
                events=events,
                resume=resume,
                retention=retention,
                on_experiment=on_experiment,
            )
        except asyncio.CancelledError as exc:
            # any phase: every pod sent the request that has not left the task may hold it
            holding = [pod for pod in asked if pod in mailbox.pods]
            cancellation = await cancel_pods(mailbox, holding, TELL_PODS_SECONDS)
            if task_id in self._cancel_requests:
                self._cancellations[task_id] = cancellation
            events.aborted(exc)
            raise
        except BaseException as exc:
            events.aborted(exc)
            raise
        finally:
            self._running.pop(task_id, None)
            self._router.close_channel(task_id)
        events.finished(result.seconds, result.accepted, result.rejected, result.aborted)
        return result

    async def _run(
        self,
        protocol: TaskProtocol[R],
        mailbox: ModellerMailbox,
        *,
        spec: dict[str, Any],
        asked: list[str],
        started: float,
        dataset: str,
        name: str | None,
        require_all: bool | None,
        events: TaskEvents,
        resume: str | None,
        retention: CheckpointRetention,
        on_experiment: ExperimentCallback | None,
    ) -> TaskResult[R]:
        """:meth:`run` from the request on; ``asked`` gets each pod the request went to."""
        async with KeepAlive(mailbox) as keepalive:
            refused = await _request_job(mailbox, {"task": spec, "dataset": dataset}, asked)
            answers, accepted, rejected = await _accept(
                mailbox, protocol.name, refused, require_all, self.accept_timeout
            )
            events.rejected(rejected)
            keepalive.fit(answers.replies.values())
            context = await self._experiment(
                protocol, mailbox, spec, name, events.round_finished, resume
            )
            context.checkpoints = retention
            if on_experiment is not None and context.experiment_id is not None:
                on_experiment(context.experiment_id)
            return await self._started(
                protocol, mailbox, started, context, answers, accepted, rejected
            )

    def _check_resume(self, protocol: TaskProtocol[Any], spec: dict[str, Any], resume: str) -> None:
        """Refuse a resume that cannot work before any pod is asked (reads only)."""
        if self.store is None:
            raise ConfigError("resume needs the modeller's experiment store (store=...)")
        if not protocol.resumable:
            raise ConfigError(f"protocol {protocol.name!r} cannot resume an experiment")
        record = self.store.get_experiment(resume)
        if record.status == COMPLETED:
            raise StoreError(f"experiment {resume} has completed: there is nothing to resume")
        if _resumable_part(record.task) != _resumable_part(spec):
            raise ConfigError(
                f"experiment {resume} ran another task ({record.task.get('protocol')!r} with "
                "another config); resume it with the same task (only rounds may change)"
            )

    async def _experiment(  # noqa: PLR0917 - private, called once from _run
        self,
        protocol: TaskProtocol[R],
        mailbox: ModellerMailbox,
        spec: dict[str, Any],
        name: str | None,
        on_round: RoundCallback | None,
        resume: str | None,
    ) -> ModellerContext:
        """The experiment the accepted task records into: a new one, or the resumed one.

        Raises:
            FedloomError: the store failed (the pods were told with TASK_ABORT).
        """
        try:
            if resume is None:
                experiment_id = self._create_experiment(name or protocol.name, spec)
                return ModellerContext(self.store, experiment_id, on_round)
            assert self.store is not None  # _check_resume said so
            point = resume_experiment(self.store, resume)
            logger.info("experiment %s goes on at round %d", resume, point.next_round)
            return ModellerContext(self.store, resume, on_round, resume=point)
        except FedloomError as exc:
            await _abort(mailbox, exc)
            raise

    async def _started(  # noqa: PLR0917 - private, called once from _run
        self,
        protocol: TaskProtocol[R],
        mailbox: ModellerMailbox,
        started: float,
        context: ModellerContext,
        answers: Gathered,
        accepted: list[str],
        rejected: dict[str, ErrorReport],
    ) -> TaskResult[R]:
        """The task once the pods have accepted it: the protocol, then the record."""
        experiment_id = context.experiment_id
        if not protocol.handles_start:
            await mailbox.broadcast(MessageType.TASK_START)
        try:
            result = await protocol.run_modeller(mailbox, context)
        except asyncio.CancelledError:
            self._finish(experiment_id, "failed", {"error": CANCEL_MESSAGE})
            raise  # run() tells the pods
        except BaseException as exc:
            await _abort(mailbox, exc)
            self._finish(experiment_id, "failed", {"error": str(exc)[:2000]})
            raise
        await mailbox.broadcast(MessageType.TASK_COMPLETE)
        self._finish(experiment_id, "completed", protocol.summarise(result))
        return TaskResult(
            task_id=mailbox.task_id,
            protocol=protocol.name,
            result=result,
            accepted=accepted,
            rejected=rejected,
            aborted=dict(mailbox.aborted),
            accept_seconds=dict(answers.seconds),
            experiment_id=experiment_id,
            seconds=time.monotonic() - started,
            dropped=sorted(mailbox.dropped),
            timings={pod: dict(times) for pod, times in sorted(mailbox.timings.items())},
        )

    def running_tasks(self) -> list[str]:
        """Ids of the tasks this modeller is running (:meth:`run` calls under way), sorted."""
        return sorted(self._running)

    async def cancel(self, task_id: str | None = None) -> list[TaskCancellation]:
        """Cancel the running task ``task_id`` (default: every task this modeller runs).

        The same as cancelling the asyncio task that awaits :meth:`run`: in whatever phase
        the run is, it sends TASK_CANCEL to every pod that may hold the task, waits up to
        ``TELL_PODS_SECONDS`` for each pod's TASK_ABORT(CANCELLED_BY_MODELLER) (the pod
        has stopped the task and freed its slot), then raises ``asyncio.CancelledError`` to
        its caller. This method returns once each cancelled run has done so.

        Returns:
            What each cancelled task told its pods, by task id. A task id that is not
            running (it ended meanwhile, or was never this modeller's) is left out.
        """
        current = asyncio.current_task()
        targets = {
            tid: task
            for tid, task in self._running.items()
            if (task_id is None or tid == task_id) and task is not current
        }
        self._cancel_requests |= set(targets)
        try:
            for task in targets.values():
                task.cancel(CANCEL_MESSAGE)
            if targets:
                await asyncio.wait(targets.values())
            return [
                self._cancellations[tid] for tid in sorted(targets) if tid in self._cancellations
            ]
        finally:
            self._cancel_requests -= set(targets)
            for tid in targets:
                self._cancellations.pop(tid, None)

    async def close(self) -> None:
        """Close the modeller's mailbox."""
        await self._router.close()

    def _create_experiment(self, name: str, spec: dict[str, Any]) -> str | None:
        return None if self.store is None else self.store.create_experiment(name, spec)

    def _finish(self, experiment_id: str | None, status: str, result: dict[str, Any]) -> None:
        if self.store is not None and experiment_id is not None:
            try:
                self.store.finish_experiment(experiment_id, status, result)
            except FedloomError as exc:
                logger.error("could not record the end of experiment %s: %s", experiment_id, exc)


def _resumable_part(task: Mapping[str, Any]) -> dict[str, Any]:
    """What must match to resume an experiment: the task less its number of rounds."""
    config = task.get("config")
    if isinstance(config, dict):
        config = {key: value for key, value in config.items() if key != "rounds"}
    return {"protocol": task.get("protocol"), "config": config}
