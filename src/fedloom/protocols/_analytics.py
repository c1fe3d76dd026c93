"""Federated analytics: per-column statistics combined across pods.

Pods send mergeable partials (count, sum, mean and sum of squared deviations, min, max,
histogram counts over shared edges, a quantile sketch), never rows. When a histogram is
asked for a column without a given range, a first step gathers each pod's min/max so that
every pod bins over the same edges. Pods refuse (TASK_ABORT, PRIVACY_THRESHOLD) to release
anything computed over fewer rows than their threshold.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
import pandas as pd

from fedloom._hooks import HookPoint
from fedloom.algorithms._analytics import (
    AnalyticsRequest,
    column_ranges,
    combine,
    compute_partials,
    edges_from_ranges,
)
from fedloom.algorithms._statistics import ColumnPartial, partials_from_wire, partials_to_wire
from fedloom.errors import ErrorReport, PodFailure, PodResponseError, ProtocolError
from fedloom.protocols._base import (
    ModellerContext,
    TaskProtocol,
    WorkerContext,
    check_keys,
    optional_timeout,
    register_protocol,
)
from fedloom.session import Gathered, ModellerMailbox, WorkerMailbox
from fedloom.wire import Message, MessageType

EDGE_PREFIX = "edges/"


@dataclass(frozen=True)
class AnalyticsResult:
    """Combined statistics (column → statistic → value) and which pods contributed."""

    statistics: dict[str, dict[str, Any]]
    pods: list[str]
    excluded: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@register_protocol
@dataclass(frozen=True)
class Analytics(TaskProtocol[AnalyticsResult]):
    """Federated statistics; see the module docstring.

    ``require_all``: fail with :class:`PodResponseError` if any pod refuses or does not
    answer, instead of combining the statistics of the others (on top of the modeller's
    request policy, which may ask the same). Each step is one request of the task
    (``ranges``, then ``partials``), judged by that policy; ``timeout``, when set, is
    the steps' time-out instead of the policy's.
    """

    name = "analytics"

    request: AnalyticsRequest
    timeout: float | None = None
    require_all: bool = False

    def __post_init__(self) -> None:
        optional_timeout("analytics.timeout", self.timeout)

    def to_config(self) -> dict[str, Any]:
        return {
            "request": self.request.to_config(),
            "timeout": self.timeout,
            "require_all": self.require_all,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        check_keys("analytics", config, {"request"}, {"timeout", "require_all"})
        return cls(
            request=AnalyticsRequest.from_config(config["request"]),
            timeout=config.get("timeout"),
            require_all=bool(config.get("require_all", False)),
        )

    def summarise(self, result: Any) -> dict[str, Any]:
        if not isinstance(result, AnalyticsResult):
            return {}
        return {"statistics": result.statistics, "pods": result.pods, "excluded": result.excluded}

    # --- modeller side -------------------------------------------------------------

    async def run_modeller(
        self, mailbox: ModellerMailbox, context: ModellerContext
    ) -> AnalyticsResult:
        started = time.monotonic()
        excluded: dict[str, str] = {}
        edges: dict[str, np.ndarray] = {}
        if self.request.columns_needing_edges():
            await mailbox.broadcast(MessageType.INSTRUCTION, {"step": "ranges"})
            gathered = self._check(
                mailbox,
                await mailbox.collect(MessageType.RESULTS, name="ranges", timeout=self.timeout),
                excluded,
            )
            ranges = []
            for pod, reply in sorted(gathered.items()):
                body = reply.body
                if not isinstance(body, dict) or not isinstance(body.get("ranges"), dict):
                    excluded[pod] = "malformed ranges"
                    continue
                ranges.append(body["ranges"])
            try:
                edges = edges_from_ranges(ranges, self.request.histogram_bins)
            except ProtocolError as exc:
                raise PodResponseError(
                    f"analytics: unusable column ranges ({exc})", _failures(mailbox, excluded)
                ) from exc
        tensors = {f"{EDGE_PREFIX}{column}": values for column, values in edges.items()}
        await mailbox.broadcast(MessageType.INSTRUCTION, {"step": "partials"}, tensors)
        replies = self._check(
            mailbox,
            await mailbox.collect(MessageType.RESULTS, name="partials", timeout=self.timeout),
            excluded,
        )
        partials: dict[str, dict[str, ColumnPartial]] = {}
        for pod, reply in sorted(replies.items()):
            try:
                partials[pod] = partials_from_wire(reply.body, reply.tensors)
            except ProtocolError as exc:
                excluded[pod] = f"malformed partials: {exc}"
        if not partials or (self.require_all and excluded):
            raise PodResponseError(
                "analytics: pods did not return usable statistics", _failures(mailbox, excluded)
            )
        statistics = combine(partials, self.request, edges)
        return AnalyticsResult(statistics, sorted(partials), excluded, time.monotonic() - started)

    def _check(
        self, mailbox: ModellerMailbox, gathered: Gathered, excluded: dict[str, str]
    ) -> dict[str, Message]:
        # every pod that aborted so far, including before this step (e.g. right after accepting)
        excluded.update({pod: _reason(report) for pod, report in mailbox.aborted.items()})
        excluded.update({pod: "no answer in time" for pod in gathered.missing})
        if not gathered.replies or (self.require_all and excluded):
            raise PodResponseError("analytics: pods did not answer", _failures(mailbox, excluded))
        return gathered.replies

    # --- worker side ---------------------------------------------------------------

    async def run_worker(self, mailbox: WorkerMailbox, context: WorkerContext) -> dict[str, Any]:
        hooks = context.hooks.bind(mailbox, context.pod)
        await hooks.fire(HookPoint.INIT_START, protocol=self.name)
        # the table, the ranges and the partials are computed in a thread: in a pod's task
        # child this loop beats the heartbeat, and a large table must not stop it
        frame = await asyncio.to_thread(context.datasource.table)
        await hooks.fire(HookPoint.INIT_END, protocol=self.name)
        await hooks.fire(HookPoint.RUN_START, protocol=self.name)
        released: list[str] = []
        while True:
            message = await mailbox.receive({MessageType.INSTRUCTION, MessageType.TASK_COMPLETE})
            if message.type is MessageType.TASK_COMPLETE:
                record: dict[str, Any] = {"released": released}
                await hooks.fire(HookPoint.RUN_END, protocol=self.name, released=record)
                return record
            step = message.body.get("step") if isinstance(message.body, dict) else None
            if step == "ranges":
                ranges = await asyncio.to_thread(
                    column_ranges, frame, self.request, min_rows=context.min_rows
                )
                await hooks.fire(HookPoint.PROGRESS, stage=step)
                await mailbox.send(
                    MessageType.RESULTS, {"ranges": {c: [lo, hi] for c, (lo, hi) in ranges.items()}}
                )
            elif step == "partials":
                edges = {
                    name.removeprefix(EDGE_PREFIX): values
                    for name, values in message.tensors.items()
                    if name.startswith(EDGE_PREFIX)
                }
                body, tensors = await asyncio.to_thread(
                    _partials_for_wire, frame, self.request, edges, context.min_rows
                )
                await hooks.fire(HookPoint.PROGRESS, stage=step)
                await mailbox.send(MessageType.RESULTS, body, tensors)
            else:
                raise ProtocolError(f"unknown analytics step {step!r}")
            released.append(str(step))


def _partials_for_wire(
    frame: pd.DataFrame, request: AnalyticsRequest, edges: dict[str, np.ndarray], min_rows: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The pod's partials in their wire form (run off the event loop)."""
    partials = compute_partials(frame, request, edges=edges, min_rows=min_rows)
    return partials_to_wire(partials)


def _reason(report: ErrorReport) -> str:
    return f"{report.reason.value}: {report.message}"


def _failures(mailbox: ModellerMailbox, excluded: dict[str, str]) -> dict[str, PodFailure | str]:
    """``excluded``, with each pod that aborted as it reported (typed)."""
    reported = {pod: PodFailure.from_report(report) for pod, report in mailbox.aborted.items()}
    return {**excluded, **{pod: why for pod, why in reported.items() if pod in excluded}}
