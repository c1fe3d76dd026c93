"""A modeller's task on the live-event stream: what :class:`TaskEvents` publishes, and when.

For one :meth:`Modeller.run <fedloom.modeller.Modeller.run>`, in order:

1. ``TASK_STARTED`` (participant ``"modeller"``) before the request goes out;
2. per pod, as its status messages arrive: ``STATUS`` (preparing data, configuring the
   task, heartbeats), ``BATCH_COUNT``, ``BATCH_STARTED``, ``PROGRESS`` (the body the pod's
   progress hook sent, less what is not JSON);
3. ``PARTICIPANT_REJECTED`` for each pod that refused the task, once the accept phase is
   over and the task goes on;
4. ``ROUND_FINISHED`` after each round the protocol reports (FedAvg's round summary);
5. at the end ``PARTICIPANT_FAILED`` for each pod that left the task after accepting it,
   then ``TASK_FINISHED``; or ``TASK_ABORTED`` when the run raised (cancelled, refused by
   the pods, the protocol failed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fedloom._events import MODELLER, EventKind, EventStream, fields_of
from fedloom.errors import ErrorReport
from fedloom.wire import MessageType

__all__ = ["TaskEvents"]

_STATUS_KINDS = {
    MessageType.PROGRESS: EventKind.PROGRESS,
    MessageType.NUM_BATCHES: EventKind.BATCH_COUNT,
    MessageType.CURRENT_BATCH_ID: EventKind.BATCH_STARTED,
}
"""Status messages with their own kind; the others are ``STATUS`` events."""


class TaskEvents:
    """Publishes one task's events on ``stream`` (see the module docstring)."""

    def __init__(self, stream: EventStream, task_id: str) -> None:
        self._stream = stream
        self.task_id = task_id

    def _publish(self, participant: str, kind: EventKind, fields: Mapping[str, Any]) -> None:
        # fields_of: what pods and protocols put in a summary must not break the task
        self._stream.publish(self.task_id, participant, kind, fields_of(fields))

    def started(self, protocol: str, pods: Iterable[str]) -> None:
        self._publish(MODELLER, EventKind.TASK_STARTED, {"protocol": protocol, "pods": list(pods)})

    def status(self, pod: str, type: MessageType, body: Mapping[str, object]) -> None:
        """A pod's status message (a :class:`~fedloom.transport.ModellerMailbox` callback)."""
        kind = _STATUS_KINDS.get(type, EventKind.STATUS)
        fields = {"status": type.value.lower()} if kind is EventKind.STATUS else body
        self._publish(pod, kind, fields)

    def round_finished(self, summary: Mapping[str, Any]) -> None:
        """A protocol's round summary (FedAvg's ``RoundMetrics.to_dict()``)."""
        fields = {**summary, "metrics": summary.get("aggregated", {})}
        self._publish(MODELLER, EventKind.ROUND_FINISHED, fields)

    def rejected(self, reports: Mapping[str, ErrorReport]) -> None:
        for pod, report in sorted(reports.items()):
            self._publish(pod, EventKind.PARTICIPANT_REJECTED, _report(report))

    def finished(
        self,
        seconds: float,
        accepted: Iterable[str],
        rejected: Iterable[str],
        aborted: Mapping[str, ErrorReport],
    ) -> None:
        for pod, report in sorted(aborted.items()):
            self._publish(pod, EventKind.PARTICIPANT_FAILED, _report(report))
        fields = {
            "seconds": seconds,
            "accepted": sorted(accepted),
            "rejected": sorted(rejected),
            "aborted": sorted(aborted),
        }
        self._publish(MODELLER, EventKind.TASK_FINISHED, fields)

    def aborted(self, error: BaseException) -> None:
        message = str(error) or type(error).__name__
        fields = {"reason": type(error).__name__, "message": message[:2000]}
        self._publish(MODELLER, EventKind.TASK_ABORTED, fields)


def _report(report: ErrorReport) -> dict[str, str]:
    return {"reason": report.reason.value, "message": report.message}
