"""The pod's one release guard: no protocol's worker runs on fewer rows than min_rows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Self

import numpy as np
import pytest

from fedloom._hooks import HookSet
from fedloom.errors import AbortReason, PrivacyThresholdError, abort_reason_for
from fedloom.pod import ArraySource
from fedloom.protocols._base import ModellerContext, TaskProtocol, WorkerContext
from fedloom.session import ModellerMailbox, WorkerMailbox


@dataclass(frozen=True)
class _Forgetful(TaskProtocol):
    """A new protocol that checks no threshold itself."""

    name = "forgetful-test"
    ran: list[int]

    def to_config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Self:
        return cls([])

    async def run_modeller(self, mailbox: ModellerMailbox, context: ModellerContext) -> Any:
        return None

    async def run_worker(
        self, mailbox: WorkerMailbox, context: WorkerContext
    ) -> dict[str, Any] | None:
        self.ran.append(len(context.datasource))
        return {"released": True}


def _context(rows: int, min_rows: int) -> WorkerContext:
    source = ArraySource(np.zeros((rows, 2), np.float32), np.zeros(rows, np.int64))
    return WorkerContext("pod-a", source, min_rows, hooks=HookSet())


async def test_a_protocol_that_forgets_the_threshold_is_still_refused_below_it() -> None:
    protocol = _Forgetful([])
    mailbox: Any = None  # never reached
    with pytest.raises(PrivacyThresholdError, match=r"cover 4 rows.*fewer than 5") as info:
        await protocol.serve_worker(mailbox, _context(rows=4, min_rows=5))
    assert protocol.ran == []
    assert abort_reason_for(info.value) is AbortReason.PRIVACY_THRESHOLD
    assert await protocol.serve_worker(mailbox, _context(rows=5, min_rows=5)) == {"released": True}
    assert protocol.ran == [5]


def test_release_judges_a_finer_count_in_its_unit() -> None:
    context = _context(rows=50, min_rows=10)
    context.release(10, "files")
    with pytest.raises(PrivacyThresholdError, match="cover 9 files"):
        context.release(9, "files")
