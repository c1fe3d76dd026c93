"""Demultiplexing one identity's mailbox into per-task channels.

A pod runs several tasks at once and a modeller may too, all over one :class:`Mailbox`.
The :class:`TaskRouter` reads that mailbox in one background task and puts each message
on the channel of its task id; messages for tasks without a channel (a new JOB_REQUEST)
go to the router's inbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from fedloom.errors import MailboxClosedError, ReceiveTimeoutError
from fedloom.transport._base import Mailbox
from fedloom.wire import Message

logger = logging.getLogger(__name__)

Item = Message | None  # None: the mailbox closed


class Channel:
    """The queue of one task's incoming messages."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self._queue: asyncio.Queue[Item] = asyncio.Queue()
        self._closed = False
        self._observer: Callable[[Message], bool] | None = None

    def observe(self, observer: Callable[[Message], bool] | None) -> None:
        """Show every message to ``observer`` as it arrives; it keeps those it returns True for.

        For what must be noticed on arrival, not when the task next reads its channel
        (a pod notes that the modeller is alive while the task is busy elsewhere).
        """
        self._observer = observer

    def put(self, item: Item) -> None:
        if item is not None and self._observer is not None and self._observer(item):
            return
        self._queue.put_nowait(item)

    async def get(self, timeout: float | None = None) -> Message:
        """The next message of this task.

        Raises:
            ReceiveTimeoutError: nothing arrived within ``timeout`` seconds.
            MailboxClosedError: the underlying mailbox closed.
        """
        if self._closed:
            raise MailboxClosedError(f"the mailbox carrying task {self.task_id!r} is closed")
        try:
            # not asyncio.wait_for: on 3.11 it swallows a cancellation that arrives as the
            # item does, and a cancelled task (SIGTERM) would read on as if never told
            async with asyncio.timeout(timeout):
                item = await self._queue.get()
        except TimeoutError:
            raise ReceiveTimeoutError(
                f"no message for task {self.task_id!r} within {timeout} s"
            ) from None
        if item is None:
            self._closed = True
            raise MailboxClosedError(f"the mailbox carrying task {self.task_id!r} is closed")
        return item

    def qsize(self) -> int:
        return self._queue.qsize()


class TaskRouter:
    """Reads a mailbox and routes each message to its task's channel (or the inbox)."""

    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox
        self.inbox = Channel("<inbox>")
        self._channels: dict[str, Channel] = {}
        self._pump: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def identity(self) -> str:
        return self.mailbox.identity

    def start(self) -> None:
        """Start the background reader; idempotent."""
        if self._pump is None:
            self._pump = asyncio.get_running_loop().create_task(
                self._run(), name=f"router:{self.identity}"
            )

    def open_channel(self, task_id: str) -> Channel:
        """The channel for ``task_id``, created empty if new."""
        channel = self._channels.get(task_id)
        if channel is None:
            channel = Channel(task_id)
            if self._closed:
                channel.put(None)
            self._channels[task_id] = channel
        return channel

    def close_channel(self, task_id: str) -> None:
        """Forget ``task_id``; later messages for it go to the inbox."""
        self._channels.pop(task_id, None)

    async def send(self, message: Message) -> Message:
        return await self.mailbox.send(message)

    async def _run(self) -> None:
        while True:
            try:
                message = await self.mailbox.receive()
            except MailboxClosedError:
                break
            channel = self._channels.get(message.task_id)
            (channel or self.inbox).put(message)
        self._closed = True
        for channel in [*self._channels.values(), self.inbox]:
            channel.put(None)

    async def close(self) -> None:
        """Close the mailbox and stop the reader."""
        await self.mailbox.close()
        if self._pump is not None:
            self._pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pump
        self._closed = True
        for channel in [*self._channels.values(), self.inbox]:
            channel.put(None)
