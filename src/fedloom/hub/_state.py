"""What a hub keeps besides its store: recent frames in memory, pods' accept lists on disk."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

logger = logging.getLogger(__name__)


class FrameCache:
    """Frames stored lately, kept in memory (up to a byte budget).

    Delivering them to a connected recipient then does not read them back from disk.
    """

    def __init__(self, budget: int) -> None:
        self._budget = budget
        self._bytes = 0
        self._frames: dict[int, tuple[bytes, bytes]] = {}

    def put(self, message_id: int, frame: bytes, signature: bytes) -> None:
        if len(frame) > self._budget:
            return
        self._frames[message_id] = (frame, signature)
        self._bytes += len(frame)
        while self._bytes > self._budget:
            self.pop(next(iter(self._frames)))

    def get(self, message_id: int) -> tuple[bytes, bytes] | None:
        return self._frames.get(message_id)

    def pop(self, message_id: int) -> None:
        entry = self._frames.pop(message_id, None)
        if entry is not None:
            self._bytes -= len(entry[0])


def load_accepts(path: Path) -> dict[str, frozenset[str]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.error("hub: ignoring unreadable %s (%s); pods will say it again", path, exc)
        return {}
    if not isinstance(data, dict):
        return {}
    return {
        str(pod): frozenset(str(name) for name in names)
        for pod, names in data.items()
        if isinstance(names, list)
    }


def save_accepts(path: Path, accepts: Mapping[str, frozenset[str]]) -> None:
    temporary = path.with_suffix(".tmp")
    try:
        temporary.write_text(json.dumps({pod: sorted(names) for pod, names in accepts.items()}))
        os.replace(temporary, path)
    except OSError as exc:
        logger.error("hub: cannot save %s: %s", path, exc)
