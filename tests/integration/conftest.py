"""Shared pieces of the integration suite.

Everything here drives the real components: a real :class:`~fedloom.hub.MemoryHub`, real
pods and modeller (through :class:`~fedloom.LocalFederation`), real SQLite stores in
``tmp_path``. The only stand-ins are the participants in :class:`FakePod` and
:class:`RawClient`: a pod or a modeller that the test scripts message by message, for
the cases a real one cannot be made to produce on demand (a poisoned update, a raw
JOB_REQUEST with a malformed body, an answer that arrives late).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedloom import ModelSpec
from fedloom.hub import MemoryHub
from fedloom.plugins import Message, MessageType
from fedloom.pod import ArraySource, Pod, SqlitePodStore
from fedloom.transport import Mailbox

REPLY_TIMEOUT = 10.0
"""Seconds a scripted participant waits for its next message."""

TINY_MLP = ModelSpec("mlp", {"in_features": 4, "hidden": [8], "out_features": 2})

Answer = Callable[[Message], Awaitable[tuple[MessageType, Any, dict[str, np.ndarray]] | None]]
"""A fake pod's reply to one message of its task: (type, body, tensors), or None."""


async def until_idle(pod: Pod, timeout: float = REPLY_TIMEOUT) -> None:
    """Wait until ``pod`` has finished every task (the modeller does not wait for that).

    ``Modeller.run`` returns right after it sends TASK_COMPLETE; the pod records the end
    of the task when it has read that message, a moment later.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while pod.running_tasks():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"pod {pod.name!r} still runs {pod.running_tasks()}")
        await asyncio.sleep(0.005)


async def ended_task_runs(
    store: Path, count: int, timeout: float = 20.0
) -> list[tuple[str, str | None]]:
    """The (status, reason) of every task run in the pod store at ``store``, once ``count``
    of them have ended: a pod process records the end of a task a moment after it answered.
    """
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        with SqlitePodStore(store) as opened:
            runs = [(run.status, run.reason) for run in opened.task_runs()]
        if sum(status in ("completed", "aborted") for status, _ in runs) >= count:
            return runs
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{store} never had {count} ended task runs: {runs}")
        await asyncio.sleep(0.05)


def labelled_arrays(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A learnable 4-feature, 2-class problem: the label is the sign of x0 + x1."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    return x, y


def labelled_pods(sizes: Mapping[str, int]) -> dict[str, ArraySource]:
    """One :func:`labelled_arrays` source per pod, of its size, seeded by its position."""
    return {
        pod: ArraySource(*labelled_arrays(rows, seed=i))
        for i, (pod, rows) in enumerate(sizes.items())
    }


class FakePod:
    """A scripted participant: accepts one task, then lets ``answer`` reply to each step.

    It waits for the modeller's TASK_START like a real pod does, answers every later
    message with ``answer(message)`` (no reply when that returns None), and stops at
    TASK_COMPLETE or TASK_ABORT. ``received`` lists the types it saw, in order.
    """

    def __init__(self, mailbox: Mailbox, answer: Answer, *, accept_delay: float = 0.0) -> None:
        self.mailbox = mailbox
        self.answer = answer
        self.accept_delay = accept_delay
        self.received: list[MessageType] = []
        self.request: Message | None = None

    async def _next(self) -> Message:
        message = await self.mailbox.receive(timeout=REPLY_TIMEOUT)
        self.received.append(message.type)
        return message

    async def _reply(
        self, type: MessageType, body: Any = None, tensors: Mapping[str, np.ndarray] | None = None
    ) -> None:
        assert self.request is not None
        await self.mailbox.send(
            Message(
                type,
                "",
                self.request.sender,
                self.request.task_id,
                body=body,
                tensors=dict(tensors or {}),
            )
        )

    async def run(self) -> list[MessageType]:
        self.request = await self._next()
        assert self.request.type is MessageType.JOB_REQUEST, self.request
        if self.accept_delay:
            await asyncio.sleep(self.accept_delay)
        await self._reply(MessageType.JOB_ACCEPT)
        while (await self._next()).type is not MessageType.TASK_START:
            pass
        while True:
            message = await self._next()
            if message.type in (MessageType.TASK_COMPLETE, MessageType.TASK_ABORT):
                return self.received
            reply = await self.answer(message)
            if reply is not None:
                await self._reply(*reply)


RAW = "raw-modeller"
"""The identity of a :class:`RawClient` (pods must accept it: ``guests=[RAW]``)."""


class RawClient:
    """A modeller identity on the hub that sends hand-written JOB_REQUESTs."""

    def __init__(self, hub: MemoryHub, identity: str = RAW) -> None:
        self.identity = identity
        self.mailbox = hub.connect(identity, "modeller")

    async def request(self, pod: str, body: Any, task_id: str | None = None) -> Message:
        """Send a JOB_REQUEST with ``body`` to ``pod``; return the pod's answer."""
        task_id = task_id or uuid.uuid4().hex
        await self.mailbox.send(Message(MessageType.JOB_REQUEST, "", pod, task_id, body=body))
        while True:
            reply = await self.mailbox.receive(timeout=REPLY_TIMEOUT)
            if reply.task_id == task_id and reply.type in (
                MessageType.JOB_ACCEPT,
                MessageType.JOB_REJECT,
            ):
                return reply
