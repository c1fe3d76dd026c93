"""HEARTBEAT to a task's pods while it runs, so they can tell a live modeller from a dead one.

A pod ends a task whose modeller has been silent for its ``modeller_timeout`` (it says how
long in its JOB_ACCEPT). A modeller may be silent for long stretches while it waits for
results (a long round, a long stream of batches), so it beats well within the shortest
such timeout of the pods that accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Iterable
from types import TracebackType

from fedloom.errors import FedloomError
from fedloom.session import ModellerMailbox
from fedloom.wire import Message, MessageType

logger = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_SECONDS = 30.0
"""Seconds between heartbeats when no pod asks for more often."""

BEATS_PER_TIMEOUT = 4
"""Heartbeats a pod gets within its timeout: a few may be late without ending the task."""

MIN_HEARTBEAT_SECONDS = 0.05


class KeepAlive:
    """Sends HEARTBEAT to the task's active pods every :attr:`interval` seconds.

    Use as ``async with KeepAlive(mailbox) as beat:``; :meth:`fit` adapts the interval to
    the pods' accepts. A heartbeat that cannot be delivered is only logged: the task's own
    messages report a lost connection.
    """

    def __init__(self, mailbox: ModellerMailbox, interval: float = DEFAULT_HEARTBEAT_SECONDS):
        self.mailbox = mailbox
        self.interval = interval
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def fit(self, accepts: Iterable[Message]) -> None:
        """Beat often enough for the shortest ``modeller_timeout`` the accepts name."""
        timeouts = [_timeout(message) for message in accepts]
        shortest = min((t for t in timeouts if t is not None), default=None)
        if shortest is None:
            return
        interval = max(MIN_HEARTBEAT_SECONDS, shortest / BEATS_PER_TIMEOUT)
        if interval < self.interval:
            self.interval = interval
            self._changed.set()

    async def __aenter__(self) -> KeepAlive:
        self._task = asyncio.get_running_loop().create_task(self._beat())
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _beat(self) -> None:
        while True:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                # not wait_for: on 3.11 it can swallow the cancel that ends this loop
                async with asyncio.timeout(self.interval):
                    await self._changed.wait()
                continue  # a shorter interval: wait again from now
            try:
                await self.mailbox.broadcast(MessageType.HEARTBEAT)
            except FedloomError as exc:
                logger.debug("task %s: a heartbeat was not sent: %s", self.mailbox.task_id, exc)


def _timeout(message: Message) -> float | None:
    if message.type is not MessageType.JOB_ACCEPT or not isinstance(message.body, dict):
        return None
    value = message.body.get("modeller_timeout")
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None
