"""The pod's side of a task child: start it, broker its mailbox, watch it, stop it.

:class:`WorkerProcess` spawns :func:`~fedloom.worker._child.child_main` (``spawn`` start
method: a fresh interpreter that shares nothing with the pod but what it is handed) and
then, in :meth:`WorkerProcess.run`:

- forwards the task's messages from the modeller to the child, sets the cross-process
  start event when the modeller's TASK_START arrives, and stops the child when the modeller
  cancels (TASK_CANCEL / TASK_ABORT);
- sends what the child asks to send, always to this task's modeller and under this task's
  id, through the pod's own mailbox (which signs and encrypts: the child holds no key and no
  hub connection);
- watches the child: its exit (any code or signal, noticed from the process sentinel),
  its heartbeat (no tick for interval * patience seconds: hung) and its resident memory
  (above the cap: stopped). A child that fails is stopped, the modeller gets TASK_ABORT with
  the reason, and :class:`~fedloom.errors.TaskAbortedError` tells the pod to record it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import shutil
import time
from collections.abc import Mapping
from typing import Any

import psutil

from fedloom.errors import (
    AbortReason,
    ErrorReport,
    FedloomError,
    TaskAbortedError,
    WorkerFailedError,
)
from fedloom.protocols import StoreLedger
from fedloom.session import WorkerMailbox
from fedloom.transport import Channel
from fedloom.wire import MessageType
from fedloom.worker._broker import LinkBroker
from fedloom.worker._child import child_main, resolve_once
from fedloom.worker._config import IsolationSettings, WorkerConfig
from fedloom.worker._heartbeat import STARTUP_SECONDS, Liveness
from fedloom.worker._ipc import Link, exchange_folder

logger = logging.getLogger(__name__)

__all__ = ["STARTUP_SECONDS", "WorkerProcess"]


class WorkerProcess:
    """One task's child process, seen from the pod."""

    def __init__(
        self,
        config: WorkerConfig,
        settings: IsolationSettings | None = None,
        *,
        ledger: StoreLedger | None = None,
    ) -> None:
        """``ledger``: the pod's records the child may ask for (none: a throw-away one)."""
        self.config = config
        self.settings = settings or IsolationSettings()
        self.ledger = ledger or StoreLedger(None)
        context = multiprocessing.get_context("spawn")
        self._folder = exchange_folder(config.task_id)
        parent_end, self._child_end = context.Pipe(duplex=True)
        self._link = Link(parent_end, self._folder)
        self._start_event = context.Event()
        self._heartbeat = context.Value("d", 0.0, lock=False)
        self.process = context.Process(
            target=child_main,
            args=(config, self._child_end, str(self._folder), self._start_event, self._heartbeat),
            daemon=True,
            name=f"fedloom-task-{config.task_id[:12]}",
        )
        self.spawned_at = 0.0
        self.ready_at: float | None = None
        self._liveness: Liveness | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def start(self) -> None:
        """Spawn the child (it rebuilds the worker while the pod waits for TASK_START)."""
        self._liveness = Liveness(self.settings.hang_seconds)
        self.spawned_at = self._liveness.spawned_at
        self.process.start()
        self._child_end.close()  # the child holds its own copy

    async def run(
        self, channel: Channel, mailbox: WorkerMailbox, start_timeout: float
    ) -> Mapping[str, Any] | None:
        """Run the task to its end; returns the record the worker released.

        Raises:
            TaskAbortedError: the modeller cancelled, or the child failed (the modeller was
                told with TASK_ABORT), with the reason.
        """
        loop = asyncio.get_running_loop()
        exited = loop.create_future()
        loop.add_reader(self.process.sentinel, resolve_once, exited)
        watchdog = loop.create_task(self._watch(exited, start_timeout))
        broker = LinkBroker(
            self._link,
            self._start_event,
            ledger=self.ledger,
            handles_start=self.config.handles_start,
            on_ready=self._ready,
        )
        try:
            return await broker.serve(channel, mailbox, watchdog)
        except WorkerFailedError as failure:
            report = ErrorReport(
                failure.reason,
                failure.message,
                failure.exception_type,
                failure.traceback_summary,
                failure.reported_code,
            )
            with contextlib.suppress(FedloomError):
                await mailbox.send(MessageType.TASK_ABORT, report.to_body())
            raise TaskAbortedError(failure.reason, failure.message) from None
        finally:
            loop.remove_reader(self.process.sentinel)
            watchdog.cancel()
            await self.stop()

    def _ready(self) -> None:
        self.ready_at = time.monotonic()
        logger.info(
            "task %s: worker ready %.2f s after spawn",
            self.config.task_id,
            self.ready_at - self.spawned_at,
        )

    async def _watch(self, exited: asyncio.Future[None], start_timeout: float) -> None:
        """Ends (raising the abort) when the child dies, hangs or uses too much memory."""
        settings = self.settings
        liveness = self._liveness or Liveness(settings.hang_seconds)
        liveness.expect_start(start_timeout)
        check = min(1.0, settings.heartbeat_interval / 2)
        while True:
            await asyncio.wait({exited}, timeout=check)  # cancel-safe, unlike 3.11 wait_for
            if exited.done():
                self.process.join(1.0)
                raise _abort(AbortReason.WORKER_CRASHED, _describe_exit(self.process.exitcode))
            failure = liveness.verdict(self._heartbeat.value, started=self._start_event.is_set())
            if failure is not None:
                raise failure
            limit = settings.memory_limit_bytes
            if limit is not None:
                used = _resident_bytes(self.process.pid)
                if used > limit:
                    raise _abort(
                        AbortReason.WORKER_OUT_OF_MEMORY,
                        f"the task used {used >> 20} MiB, above the pod's cap of {limit >> 20} MiB",
                    )

    async def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after the grace period) and clean up."""
        process = self.process
        if process.pid is not None and process.exitcode is None:
            with contextlib.suppress(FedloomError):
                self._link.put("stop")
            await asyncio.to_thread(process.join, min(self.settings.stop_grace, 1.0))
            if process.exitcode is None:
                process.terminate()
                await asyncio.to_thread(process.join, self.settings.stop_grace)
            if process.exitcode is None:
                process.kill()
                await asyncio.to_thread(process.join, 5.0)
        self._link.close()
        shutil.rmtree(self._folder, ignore_errors=True)


def _abort(reason: AbortReason, message: str) -> WorkerFailedError:
    return WorkerFailedError(reason, message)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "the worker process ended"
    if code < 0:
        return f"the worker process was killed by signal {-code}"
    return f"the worker process exited with code {code}"


def _resident_bytes(pid: int | None) -> int:
    if pid is None:
        return 0
    try:
        process = psutil.Process(pid)
        total = process.memory_info().rss
        for child in process.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total
    except psutil.Error:
        return 0
