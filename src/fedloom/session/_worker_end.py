"""The pod-side end of one task.

Send to the task's modeller, and receive its next message of an expected type (a cancel or
abort from the modeller raises).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping

import numpy as np

from fedloom.errors import (
    ProtocolError,
    TaskAbortedError,
    TaskCancelledError,
)
from fedloom.session._reports import report_of
from fedloom.transport._router import Channel, TaskRouter
from fedloom.wire import Body, Message, MessageType

logger = logging.getLogger(__name__)


class WorkerMailbox:
    """The pod-side end of one task."""

    def __init__(self, router: TaskRouter, channel: Channel, modeller: str) -> None:
        self._router = router
        self._channel = channel
        self.task_id = channel.task_id
        self.modeller = modeller

    async def send(
        self,
        type: MessageType,
        body: Body = None,
        tensors: Mapping[str, np.ndarray] | None = None,
    ) -> Message:
        """Send one message of this task to the modeller; returns it as sent.

        Raises:
            TransportError: the message could not be delivered.
            WireError: the body or tensors cannot be encoded.
        """
        return await self._router.send(
            Message(type, "", self.modeller, self.task_id, body=body, tensors=dict(tensors or {}))
        )

    async def progress(self, **fields: float | int | str) -> None:
        """Send a PROGRESS message (shown on the modeller's progress bar for this pod)."""
        await self.send(MessageType.PROGRESS, dict(fields))

    async def receive(
        self, types: MessageType | Collection[MessageType], timeout: float | None = None
    ) -> Message:
        """The modeller's next message, which must be one of ``types``.

        Raises:
            TaskAbortedError: the modeller cancelled or aborted the task.
            ProtocolError: the modeller sent a message of another type.
            ReceiveTimeoutError: nothing arrived within ``timeout`` seconds.
            MailboxClosedError: the pod's connection closed.
        """
        allowed = {types} if isinstance(types, MessageType) else set(types)
        while True:
            message = await self._channel.get(timeout)
            if message.sender != self.modeller:
                logger.warning(
                    "dropping %s from %r: not this task's modeller", message.type, message.sender
                )
                continue
            if message.type in allowed:
                return message
            if message.type is MessageType.TASK_CANCEL:
                raise TaskCancelledError()
            if message.type is MessageType.TASK_ABORT:
                report = report_of(message)
                raise TaskAbortedError(report.reason, report.message)
            names = ", ".join(sorted(t.value for t in allowed))
            raise ProtocolError(f"expected {names} from the modeller, got {message.type.value}")
