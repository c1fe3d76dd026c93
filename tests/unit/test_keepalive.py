"""The modeller's heartbeat runs on its event loop's clock: virtual time, no sleeping."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from fedloom.errors import TransportError
from fedloom.modeller._keepalive import KeepAlive
from fedloom.session import ModellerMailbox
from fedloom.testing import virtual_loop
from fedloom.wire import Message, MessageType


class Recorder:
    """A modeller mailbox that notes when each heartbeat goes out (every other one fails)."""

    task_id = "task-1"

    def __init__(self) -> None:
        self.beats: list[float] = []

    async def broadcast(self, type: MessageType, *args: Any, **kwargs: Any) -> None:
        assert type is MessageType.HEARTBEAT
        self.beats.append(asyncio.get_running_loop().time())
        if len(self.beats) % 2:
            raise TransportError("the hub is gone for a moment")


def _accept(timeout: Any) -> Message:
    return Message(MessageType.JOB_ACCEPT, "pod", "m", "task-1", body={"modeller_timeout": timeout})


@pytest.mark.virtual_time
@pytest.mark.async_timeout(120)  # on both clocks: the test spends 82.5 s of virtual time
async def test_beats_every_interval_and_sooner_once_a_pod_needs_it() -> None:
    mailbox = Recorder()
    async with KeepAlive(cast(ModellerMailbox, mailbox), interval=30.0) as keepalive:
        await asyncio.sleep(70.0)
        keepalive.fit([_accept(20), _accept("soon"), _accept(-1), _accept(100)])
        assert keepalive.interval == 5.0
        await asyncio.sleep(12.0)
        keepalive.fit([_accept(200)])  # never slower again
        assert keepalive.interval == 5.0
        await asyncio.sleep(0.5)
    assert virtual_loop().time() == 82.5
    beats = mailbox.beats
    assert beats == [30.0, 60.0, 75.0, 80.0], "a failed heartbeat must not stop the beat"
