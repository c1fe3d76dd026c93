"""The pod's task slots: at most so many tasks run at once, the others wait in arrival order.

A queued task hears its place in the queue and still reads its channel, so that a
TASK_CANCEL or TASK_ABORT from its modeller ends it before it ever runs.
"""

from __future__ import annotations

import asyncio

from fedloom.errors import TaskAbortedError, TaskCancelledError
from fedloom.pod._liveness import _HeldChannel
from fedloom.session import WorkerMailbox, report_of
from fedloom.wire import Message, MessageType


class _Slots:
    """At most ``limit`` tasks hold a slot; the others wait in arrival order.

    A freed slot goes straight to the head of the queue, so a task that arrives later never
    overtakes one already waiting. Each waiter has an event that is set whenever the queue
    moves (it got the slot, or someone ahead of it left).
    """

    def __init__(self) -> None:
        self.running: set[str] = set()
        self._waiting: dict[str, asyncio.Event] = {}  # insertion order = arrival order

    def admit(self, task_id: str, limit: int) -> None:
        """Give ``task_id`` a slot now if one is free and nobody waits; else queue it."""
        if not self._waiting and len(self.running) < limit:
            self.running.add(task_id)
        else:
            self._waiting[task_id] = asyncio.Event()

    def queued(self) -> list[str]:
        return list(self._waiting)

    def position(self, task_id: str) -> int | None:
        """1-based place in the queue; None once ``task_id`` holds a slot."""
        if task_id in self.running:
            return None
        return list(self._waiting).index(task_id) + 1

    def moved(self, task_id: str) -> asyncio.Event:
        return self._waiting[task_id]

    def release(self, task_id: str, limit: int) -> None:
        """``task_id`` ended (running or queued): hand free slots on, wake the waiters."""
        moved = self._waiting.pop(task_id, None) is not None
        self.running.discard(task_id)
        while self._waiting and len(self.running) < limit:
            head = next(iter(self._waiting))
            self.running.add(head)
            self._waiting.pop(head).set()
            moved = True
        if moved:
            for event in self._waiting.values():
                event.set()


async def _wait_for_slot(slots: _Slots, mailbox: WorkerMailbox, channel: _HeldChannel) -> None:
    """Return once the task holds a slot, telling the modeller its place meanwhile.

    Raises:
        TaskAbortedError: the modeller cancelled or aborted the task while it waited.
        MailboxClosedError: the pod's connection closed while the task waited.
    """
    task_id = mailbox.task_id
    reported: int | None = None
    reader: asyncio.Task[Message] | None = None
    try:
        while (position := slots.position(task_id)) is not None:
            if position != reported:
                await mailbox.progress(state="queued", position=position)
                reported = position
                continue  # the queue may have moved while that was sent
            # nothing was awaited since the position was read: an earlier move is
            # already in it, and any later one sets the event again
            moved = slots.moved(task_id)
            moved.clear()
            reader = reader or asyncio.ensure_future(channel.inner.get())
            waiter = asyncio.ensure_future(moved.wait())
            try:
                await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            if reader.done():
                message, reader = reader.result(), None
                _hold(mailbox, channel, message)
    finally:
        if reader is not None and not reader.done():
            reader.cancel()  # a cancelled get leaves its message in the channel
        elif reader is not None and not reader.cancelled() and reader.exception() is None:
            channel.held.append(reader.result())


def _hold(mailbox: WorkerMailbox, channel: _HeldChannel, message: Message) -> None:
    """Act on a message that reached a queued task: end it, or keep it for later."""
    if message.sender == mailbox.modeller and message.type is MessageType.TASK_CANCEL:
        raise TaskCancelledError()
    if message.sender == mailbox.modeller and message.type is MessageType.TASK_ABORT:
        report = report_of(message)
        raise TaskAbortedError(report.reason, report.message)
    channel.held.append(message)
