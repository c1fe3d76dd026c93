"""The pod ↔ child link and the isolation settings (no processes: a pipe in this process)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import msgpack
import numpy as np
import pytest

from fedloom.errors import ConfigError, ProtocolError, TransportError
from fedloom.wire import Message, MessageType
from fedloom.worker import IsolationSettings
from fedloom.worker._ipc import INLINE_FRAME_BYTES, Link, exchange_folder


@pytest.fixture
def links(tmp_path: Path) -> tuple[Link, Link]:
    left, right = multiprocessing.Pipe(duplex=True)
    return Link(left, tmp_path), Link(right, tmp_path)


def _message(size: int) -> Message:
    return Message(
        MessageType.MODEL_PARAMETERS,
        "pod-a",
        "alice",
        "task-1",
        body={"round": 1},
        tensors={"w": np.arange(size // 4, dtype=np.float32)},
    )


@pytest.mark.parametrize("size", [16, INLINE_FRAME_BYTES * 3])
def test_messages_cross_inline_or_through_a_mapped_file(
    links: tuple[Link, Link], tmp_path: Path, size: int
) -> None:
    pod, child = links
    sent = _message(size)
    pod.put("deliver", {"extra": 1}, sent)
    item = child.get()
    assert item["op"] == "deliver" and item["extra"] == 1
    assert item["message"] == sent
    assert list(tmp_path.iterdir()) == [], "a frame file is deleted once mapped"


def test_malformed_items_are_protocol_errors(links: tuple[Link, Link]) -> None:
    pod, child = links
    raw = pod._connection  # the bytes a broken child could write
    for data in (b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"no": "op"})):
        raw.send_bytes(data)
        with pytest.raises(ProtocolError):
            child.get()
    raw.send_bytes(msgpack.packb({"op": "send", "file": "../../etc/passwd"}))
    with pytest.raises(ProtocolError):
        child.get()


def test_a_closed_link(links: tuple[Link, Link]) -> None:
    pod, child = links
    child.close()
    with pytest.raises(TransportError):
        for _ in range(100):  # the first writes may still fit in the pipe buffer
            pod.put("ack", {"id": 1})
    with pytest.raises(EOFError):
        child.get()


def test_exchange_folders_are_private_and_distinct() -> None:
    first, second = exchange_folder("t"), exchange_folder("t")
    try:
        assert first != second
        assert first.stat().st_mode & 0o777 == 0o700
    finally:
        first.rmdir()
        second.rmdir()


@pytest.mark.parametrize(
    "settings",
    [
        {"heartbeat_interval": 0},
        {"heartbeat_interval": float("nan")},
        {"heartbeat_patience": 0},
        {"heartbeat_patience": True},
        {"memory_limit_bytes": 1000},
        {"stop_grace": -1},
    ],
)
def test_bad_isolation_settings(settings: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        IsolationSettings(**settings)  # type: ignore[arg-type]


def test_hang_seconds() -> None:
    assert IsolationSettings(heartbeat_interval=5, heartbeat_patience=2).hang_seconds == 10
