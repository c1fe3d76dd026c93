"""The accept phase of a task: JOB_REQUEST to each pod, then their JOB_ACCEPT or JOB_REJECT.

A pod the hub refuses the request for counts as having rejected the task. When the task
cannot start (no pod accepted, or the request policy or ``require_all`` says so), the
pods that may hold it are told with TASK_ABORT before :exc:`PodResponseError` is raised.
"""

from __future__ import annotations

from typing import Any

from fedloom.errors import (
    AccessDeniedError,
    ErrorReport,
    PodFailure,
    PodResponseError,
    UnknownRecipientError,
)
from fedloom.modeller._cancel import _cancel
from fedloom.session import Gathered, ModellerMailbox, report_of
from fedloom.wire import MessageType

ACCEPT_REQUEST = "accept"
"""The name of the accept phase in :attr:`TaskResult.timings`."""


async def _request_job(
    mailbox: ModellerMailbox, body: dict[str, Any], asked: list[str]
) -> dict[str, ErrorReport]:
    """Send JOB_REQUEST to every pod; the pods the hub refused it for, with why.

    A hub refuses a request to a pod that does not accept this modeller or does not
    exist; such a pod counts as having rejected the task. ``asked`` gets each pod as
    its request goes out (a cancelled run tells those pods).
    """
    refused: dict[str, ErrorReport] = {}
    for pod in list(mailbox.pods):
        asked.append(pod)
        try:
            await mailbox.send(pod, MessageType.JOB_REQUEST, body)
        except (AccessDeniedError, UnknownRecipientError) as exc:
            refused[pod] = mailbox.refused[pod] = ErrorReport.from_exception(exc)
            mailbox.pods.remove(pod)
    return refused


async def _accept(
    mailbox: ModellerMailbox,
    task: str,
    refused: dict[str, ErrorReport],
    require_all: bool | None,
    accept_timeout: float,
) -> tuple[Gathered, list[str], dict[str, ErrorReport]]:
    """The accept phase: the answers, the pods that accepted, those that rejected.

    Leaves :attr:`ModellerMailbox.pods` to the pods that accepted and are still in.

    Raises:
        PodResponseError: the task cannot start (the pods that may hold it were told).
    """
    policy = mailbox.policy
    try:
        answers = await mailbox.collect(
            MessageType.JOB_ACCEPT,
            name=ACCEPT_REQUEST,
            timeout=None if policy is not None else accept_timeout,
            refusals={MessageType.JOB_REJECT},
        )
    except PodResponseError as exc:
        # the pods that accepted, or have not answered yet, wait for TASK_START
        await _cancel(mailbox, "the modeller's request policy stopped the task")
        if not refused:
            raise
        reasons = {pod: PodFailure.from_report(r) for pod, r in refused.items()}
        raise PodResponseError(
            f"task {task!r} could not start", {**reasons, **exc.reports}
        ) from exc
    accepted = sorted(p for p, m in answers.replies.items() if m.type is MessageType.JOB_ACCEPT)
    rejected = refused | {
        pod: report_of(m) for pod, m in answers.replies.items() if m.type is MessageType.JOB_REJECT
    }
    failed: dict[str, PodFailure | str] = {
        pod: PodFailure.from_report(report) for pod, report in rejected.items()
    }
    failed |= {pod: "no answer" for pod in answers.missing}
    # a pod may already have aborted (e.g. its data failed to load) right after accepting
    mailbox.pods = [pod for pod in accepted if pod not in mailbox.aborted]
    legacy_require_all = policy is None and require_all is not False
    must_have_all = legacy_require_all or (policy is not None and policy.require_all)
    if not accepted or (legacy_require_all and failed) or (must_have_all and refused):
        await _cancel(mailbox, "not every pod accepted the task")
        raise PodResponseError(f"task {task!r} could not start", failed)
    return answers, accepted, rejected
