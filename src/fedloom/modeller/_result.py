"""What a modeller's task ended with: :class:`TaskResult`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

from fedloom.errors import ErrorReport

R = TypeVar("R")


@dataclass(frozen=True)
class TaskResult(Generic[R]):
    """The outcome of one task: the protocol's result and what each pod did.

    Generic over the protocol's result type: ``Modeller.run(FedAvg(...))`` gives a
    ``TaskResult[FedAvgResult]``, whose ``result`` a type checker knows.

    Attributes:
        accepted: the pods that answered JOB_ACCEPT, whatever happened afterwards.
        rejected: the pods that answered JOB_REJECT, with their reports.
        aborted: the pods that left the task after the request went out: those that sent
            TASK_ABORT and those the modeller dropped (see ``dropped``).
        dropped: the pods the modeller left out because they did not answer a request in
            time (``on_timeout="discard"``); each is in ``aborted`` as WORKER_UNRESPONSIVE.
        timings: pod → request name → seconds from the request to the pod's reply:
            ``"accept"`` for the accept phase, then the protocol's requests (``"round-0"``,
            ``"round-1"``, ... for FedAvg; ``"ranges"`` and ``"partials"`` for analytics;
            ``"results"`` for results-only; ``"ready"`` and ``"batches"``, up to the pod's
            last message, for batched protocols). A pod has no entry for a request it did
            not answer.
        accept_seconds: pod → seconds to its JOB_ACCEPT or JOB_REJECT (``timings``'s
            ``"accept"`` entries).
    """

    task_id: str
    protocol: str
    result: R
    accepted: list[str]
    rejected: dict[str, ErrorReport] = field(default_factory=dict)
    aborted: dict[str, ErrorReport] = field(default_factory=dict)
    accept_seconds: dict[str, float] = field(default_factory=dict)
    experiment_id: str | None = None
    seconds: float = 0.0
    dropped: list[str] = field(default_factory=list)
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
