"""fedloom.testing.FakeClock: moves only when told, and only forward."""

from __future__ import annotations

import math

import pytest

from fedloom.testing import FakeClock


def test_reads_what_it_was_moved_to() -> None:
    clock = FakeClock(5.0)
    assert clock() == 5.0
    assert clock.advance(1.5) == 6.5
    clock.set(10.0)
    assert clock() == 10.0
    clock.advance(0)
    assert clock() == 10.0


@pytest.mark.parametrize("step", [-1.0, math.nan, math.inf])
def test_never_moves_backwards_or_to_nowhere(step: float) -> None:
    clock = FakeClock(3.0)
    with pytest.raises(ValueError):
        clock.advance(step)
    with pytest.raises(ValueError):
        clock.set(3.0 + step if step < 0 else step)
    assert clock() == 3.0


def test_starts_at_a_finite_time() -> None:
    with pytest.raises(ValueError):
        FakeClock(math.nan)
