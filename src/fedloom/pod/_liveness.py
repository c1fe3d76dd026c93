"""A running task's channel and the modeller's liveness.

A task's channel keeps the messages read while the task was queued and the time its
modeller was last heard from; :func:`_while_heard` ends the task once that is too long ago.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Coroutine
from typing import Any, TypeVar

from fedloom.errors import ModellerTimeoutError
from fedloom.transport import Channel
from fedloom.wire import Message, MessageType

_T = TypeVar("_T")


class _HeldChannel(Channel):
    """A task's channel with the messages read while the task was queued put back in front.

    A queued task must read its channel to notice TASK_CANCEL / TASK_ABORT, but the
    modeller's TASK_START and first instruction may arrive meanwhile: those are held here
    and handed to the worker side first, in order.


    It also keeps the time the modeller was last heard from: HEARTBEAT messages only
    say that it is alive, so they are noted here and never reach the worker side.
    """

    def __init__(self, inner: Channel, modeller: str) -> None:
        super().__init__(inner.task_id)
        self.inner = inner
        self.modeller = modeller
        self.held: deque[Message] = deque()
        self.heard = asyncio.get_running_loop().time()
        # on arrival: the task may be busy for long without reading its channel
        inner.observe(self._note)

    def put(self, item: Message | None) -> None:
        self.inner.put(item)

    def _note(self, message: Message) -> bool:
        """Note that the modeller was heard; True if ``message`` says nothing more."""
        if message.sender != self.modeller:
            return False
        self.heard = asyncio.get_running_loop().time()
        return message.type is MessageType.HEARTBEAT

    async def get(self, timeout: float | None = None) -> Message:
        if self.held:
            return self.held.popleft()
        return await self.inner.get(timeout)

    def qsize(self) -> int:
        return len(self.held) + self.inner.qsize()


async def _while_heard(work: Coroutine[Any, Any, _T], channel: _HeldChannel, timeout: float) -> _T:
    """Run ``work`` while the modeller is heard from at least every ``timeout`` seconds.

    Raises:
        ModellerTimeoutError: it was not; ``work`` is cancelled (a task child is stopped).
    """
    task = asyncio.ensure_future(work)
    try:
        while True:
            # the loop clock, which times the wait below too (virtual in unit tests)
            left = timeout - (asyncio.get_running_loop().time() - channel.heard)
            if left <= 0:
                raise ModellerTimeoutError(f"no message from the modeller for {timeout:g} s")
            done, _ = await asyncio.wait({task}, timeout=left)
            if done:
                return task.result()
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})  # its clean-up (stopping a child) runs to the end
