"""The modeller: sends a task to pods, runs the protocol's modeller side, records it.

The handshake is the same for every protocol: JOB_REQUEST to each pod; JOB_ACCEPT or
JOB_REJECT (typed reason) back; TASK_START to the pods that accepted; the protocol's
conversation; TASK_COMPLETE (or TASK_ABORT when the modeller side failed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fedloom.errors import (
    AbortReason,
    ConfigError,
    ErrorReport,
    FedloomError,
    PodResponseError,
)
from fedloom.protocols import ModellerContext, Protocol, RoundCallback
from fedloom.store import ExperimentStore
from fedloom.transport import Mailbox, ModellerMailbox, ProgressCallback, TaskRouter
from fedloom.transport.task import report_of
from fedloom.wire import MessageType

logger = logging.getLogger(__name__)

DEFAULT_ACCEPT_TIMEOUT = 30.0
"""Seconds the modeller waits for pods to accept or reject a task."""


@dataclass(frozen=True)
class TaskResult:
    """The outcome of one task: the protocol's result and what each pod did."""

    task_id: str
    protocol: str
    result: Any
    accepted: list[str]
    rejected: dict[str, ErrorReport] = field(default_factory=dict)
    aborted: dict[str, ErrorReport] = field(default_factory=dict)
    accept_seconds: dict[str, float] = field(default_factory=dict)
    experiment_id: str | None = None
    seconds: float = 0.0


class Modeller:
    """The researcher's side; one instance per mailbox, any number of tasks."""

    def __init__(
        self,
        mailbox: Mailbox,
        *,
        store: ExperimentStore | None = None,
        accept_timeout: float = DEFAULT_ACCEPT_TIMEOUT,
    ) -> None:
        if not accept_timeout > 0:
            raise ConfigError(f"accept_timeout must be > 0, got {accept_timeout!r}")
        self.store = store
        self.accept_timeout = accept_timeout
        self._router = TaskRouter(mailbox)

    @property
    def identity(self) -> str:
        return self._router.identity

    async def run(
        self,
        protocol: Protocol,
        pods: Sequence[str],
        *,
        dataset: str = "default",
        name: str | None = None,
        require_all: bool = True,
        on_round: RoundCallback | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> TaskResult:
        """Run ``protocol`` on ``pods`` over their dataset ``dataset``.

        Raises:
            ConfigError: no pods, duplicate pods, or a protocol config that is not JSON.
            PodResponseError: no pod accepted, or (``require_all``) some pod rejected the
                task or did not answer; ``failed_pods`` names them with the reason.
            FedloomError: whatever the protocol's modeller side raised (the pods are told
                with TASK_ABORT first).
        """
        if not pods or len(set(pods)) != len(pods):
            raise ConfigError(f"pods must be a non-empty list of distinct names, got {list(pods)}")
        spec = protocol.dump()
        self._router.start()
        started = time.monotonic()
        task_id = uuid.uuid4().hex
        mailbox = ModellerMailbox(
            self._router, self._router.open_channel(task_id), pods, on_progress=on_progress
        )
        try:
            await mailbox.broadcast(MessageType.JOB_REQUEST, {"task": spec, "dataset": dataset})
            answers = await mailbox.gather(
                {MessageType.JOB_ACCEPT, MessageType.JOB_REJECT}, timeout=self.accept_timeout
            )
            accepted = sorted(
                p for p, m in answers.replies.items() if m.type is MessageType.JOB_ACCEPT
            )
            rejected = {
                pod: report_of(m)
                for pod, m in answers.replies.items()
                if m.type is MessageType.JOB_REJECT
            }
            failed = {pod: report.reason.value for pod, report in rejected.items()}
            failed |= {pod: "no answer" for pod in answers.missing}
            # a pod may already have aborted (e.g. its data failed to load) right after accepting
            mailbox.pods = [pod for pod in accepted if pod not in mailbox.aborted]
            if not accepted or (require_all and failed):
                await mailbox.broadcast(
                    MessageType.TASK_ABORT,
                    ErrorReport(
                        AbortReason.CANCELLED_BY_MODELLER, "not every pod accepted the task", "", ""
                    ).to_body(),
                )
                raise PodResponseError(f"task {protocol.name!r} could not start", failed)
            experiment_id = self._create_experiment(name or protocol.name, spec)
            await mailbox.broadcast(MessageType.TASK_START)
            context = ModellerContext(self.store, experiment_id, on_round)
            try:
                result = await protocol.run_modeller(mailbox, context)
            except BaseException as exc:
                await self._abort(mailbox, exc)
                self._finish(experiment_id, "failed", {"error": str(exc)[:2000]})
                raise
            await mailbox.broadcast(MessageType.TASK_COMPLETE)
            self._finish(experiment_id, "completed", protocol.summarise(result))
            return TaskResult(
                task_id=task_id,
                protocol=protocol.name,
                result=result,
                accepted=accepted,
                rejected=rejected,
                aborted=dict(mailbox.aborted),
                accept_seconds=dict(answers.seconds),
                experiment_id=experiment_id,
                seconds=time.monotonic() - started,
            )
        finally:
            self._router.close_channel(task_id)

    async def close(self) -> None:
        """Close the modeller's mailbox."""
        await self._router.close()

    async def _abort(self, mailbox: ModellerMailbox, error: BaseException) -> None:
        report = ErrorReport.from_exception(error, AbortReason.CANCELLED_BY_MODELLER)
        with contextlib.suppress(FedloomError, asyncio.CancelledError):
            await mailbox.broadcast(MessageType.TASK_ABORT, report.to_body())

    def _create_experiment(self, name: str, spec: dict[str, Any]) -> str | None:
        return None if self.store is None else self.store.create_experiment(name, spec)

    def _finish(self, experiment_id: str | None, status: str, result: dict[str, Any]) -> None:
        if self.store is not None and experiment_id is not None:
            try:
                self.store.finish_experiment(experiment_id, status, result)
            except FedloomError as exc:
                logger.error("could not record the end of experiment %s: %s", experiment_id, exc)
