"""What :mod:`fedloom.errors` says about a failure.

The report a pod sends (TASK_ABORT, JOB_REJECT), the typed failures of
:class:`PodResponseError`, the abort reason and exit code of any exception, and how an
out-of-memory failure is told apart from any other.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass

from fedloom._error_codes import AbortReason, ExitCode
from fedloom._error_tree import FedloomError
from fedloom._error_tree_tasks import ProtocolError, TaskAbortedError


@dataclass(frozen=True)
class PodFailure:
    """Why one pod is missing from a result, as typed as the pod said it.

    ``reason`` and ``code`` are None for a pod that said nothing (it did not answer in
    time); ``message`` is then the modeller's own words. Otherwise ``message`` is the
    pod's public text and ``code`` the catalogue code of its error (None when the error
    was not a fedloom error, or the pod did not say).
    """

    message: str
    reason: AbortReason | None = None
    code: int | None = None

    @classmethod
    def from_report(cls, report: ErrorReport) -> PodFailure:
        """What a pod's TASK_ABORT or JOB_REJECT report said."""
        return cls(report.message, report.reason, report.code)

    @property
    def text(self) -> str:
        """``"REASON: message"``, the bare reason, or (a silent pod) the message."""
        if self.reason is None:
            return self.message
        return f"{self.reason.value}: {self.message}" if self.message else self.reason.value


class PodResponseError(FedloomError):
    """Pods rejected a task or did not answer, where the request policy needed them.

    ``failures`` maps each failing pod to its :class:`PodFailure`; a plain text stands for
    a pod that said nothing (``"no answer within 5 s"``). :attr:`reports` keeps them typed,
    :attr:`failed_pods` as text. Its text names every pod and what it said, so the public
    text is fixed: other pods never read it.
    """

    code = 4300
    exit_code = ExitCode.TASK_FAILED
    public_message = "the modeller stopped the task: pods failed its request policy"

    def __init__(self, message: str, failures: Mapping[str, PodFailure | str]) -> None:
        reports = {
            pod: why if isinstance(why, PodFailure) else PodFailure(why)
            for pod, why in sorted(failures.items())
        }
        listing = ", ".join(f"{pod} ({why.text})" for pod, why in reports.items())
        super().__init__(f"{message}: {listing}" if listing else message)
        self.reports: Mapping[str, PodFailure] = reports

    @property
    def failed_pods(self) -> dict[str, str]:
        """Each failing pod and why, as text (:attr:`PodFailure.text`)."""
        return {pod: why.text for pod, why in self.reports.items()}


# --- abort reasons and exit codes ------------------------------------------------------------


def abort_reason_for(error: BaseException) -> AbortReason:
    """The abort reason that best describes ``error`` (WORKER_ERROR when none fits)."""
    if isinstance(error, TaskAbortedError):
        return error.reason
    if isinstance(error, FedloomError) and error.abort_reason is not AbortReason.WORKER_ERROR:
        return error.abort_reason
    if is_out_of_memory(error):
        return AbortReason.WORKER_OUT_OF_MEMORY
    return AbortReason.WORKER_ERROR


def exit_code_for(error: BaseException) -> ExitCode:
    """The exit code the command line uses for ``error``: its class's ``exit_code``."""
    if isinstance(error, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    if isinstance(error, FedloomError):
        return error.exit_code
    return ExitCode.ERROR


@dataclass(frozen=True)
class ErrorReport:
    """A bounded, network-safe description of a failure (for TASK_ABORT bodies).

    ``code`` is the catalogue code of a fedloom error (None for any other exception).
    """

    reason: AbortReason
    message: str
    exception_type: str
    traceback_summary: str
    code: int | None = None

    MAX_MESSAGE_CHARS = 2_000
    MAX_TRACEBACK_CHARS = 4_000

    @classmethod
    def from_exception(cls, error: BaseException, reason: AbortReason | None = None) -> ErrorReport:
        """The report of ``error``: its public text (a fedloom error's), reason and code."""
        import traceback

        frames = traceback.extract_tb(error.__traceback__)[-8:]
        summary = "".join(
            f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} in {f.name}\n" for f in frames
        )
        text = error.public_text() if isinstance(error, FedloomError) else str(error)
        return cls(
            reason=reason or abort_reason_for(error),
            message=text[: cls.MAX_MESSAGE_CHARS],
            exception_type=type(error).__name__,
            traceback_summary=summary[-cls.MAX_TRACEBACK_CHARS :],
            code=error.code if isinstance(error, FedloomError) else None,
        )

    def to_body(self) -> dict[str, str | int]:
        """The report as a TASK_ABORT / JOB_REJECT body."""
        body: dict[str, str | int] = {
            "reason": self.reason.value,
            "message": self.message,
            "exception_type": self.exception_type,
            "traceback_summary": self.traceback_summary,
        }
        if self.code is not None:
            body["code"] = self.code
        return body

    @classmethod
    def from_body(cls, body: object) -> ErrorReport:
        """Rebuild a report from a received body; a malformed body raises ProtocolError."""
        if not isinstance(body, dict):
            raise ProtocolError("an error report body must be a map")
        try:
            reason = AbortReason(str(body.get("reason")))
        except ValueError as exc:
            raise ProtocolError(f"unknown abort reason {body.get('reason')!r}") from exc
        fields = {}
        for key in ("message", "exception_type", "traceback_summary"):
            value = body.get(key, "")
            if not isinstance(value, str):
                raise ProtocolError(f"error report field {key!r} must be a string")
            fields[key] = value
        code = body.get("code")
        if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
            raise ProtocolError("error report field 'code' must be an integer")
        return cls(
            reason=reason,
            message=fields["message"][: cls.MAX_MESSAGE_CHARS],
            exception_type=fields["exception_type"][:200],
            traceback_summary=fields["traceback_summary"][: cls.MAX_TRACEBACK_CHARS],
            code=code,
        )


# --- out of memory -------------------------------------------------------------------------

_OOM_PHRASES = ("out of memory", "not enough memory")
"""RuntimeError texts of allocators: CUDA/MPS ("CUDA out of memory. Tried to allocate
...") and torch's CPU allocator ("DefaultCPUAllocator: not enough memory: ...")."""


def _torch_oom_class() -> type[BaseException] | None:
    torch = sys.modules.get("torch")  # never import torch only to ask this
    cuda = getattr(torch, "cuda", None)
    found = getattr(cuda, "OutOfMemoryError", None)
    return found if isinstance(found, type) and issubclass(found, BaseException) else None


def _is_torch_oom(exc: BaseException) -> bool:
    torch_oom = _torch_oom_class()
    if torch_oom is not None and isinstance(exc, torch_oom):
        return True
    return any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__)


def _one_is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError) or _is_torch_oom(exc):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return any(phrase in text for phrase in _OOM_PHRASES)
    return False


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors it was explicitly raised from (``raise ... from``)."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__
    return chain


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it was raised from) means memory ran out.

    True for :class:`MemoryError`, ``torch.cuda.OutOfMemoryError``, and a RuntimeError
    whose message says "out of memory" or "not enough memory" (CUDA and CPU allocators).
    """
    return any(_one_is_out_of_memory(error) for error in _chain(exc))


def is_device_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an out-of-memory error of a GPU rather than of system memory."""
    for error in _chain(exc):
        if _is_torch_oom(error):
            return True
        if isinstance(error, RuntimeError) and not isinstance(error, MemoryError):
            text = str(error).lower()
            if "cuda" in text and any(phrase in text for phrase in _OOM_PHRASES):
                return True
    return False
