"""Which round checkpoints an experiment keeps.

A checkpoint per round is one model per round on disk: 100 rounds of an 84 MB model are
8.4 GB. By default an experiment keeps its latest checkpoint (what a resume goes on from)
and the one of its best round by validation loss (what a researcher usually wants back);
``"all"`` keeps every one, and ``N`` the latest N (and the best).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from fedloom.errors import ConfigError
from fedloom.store._base import RoundRecord

KEEP_LAST = "last"
KEEP_ALL = "all"
DEFAULT_BEST_BY = "validation_loss"
"""The aggregated metric whose lowest round is kept besides the latest ones."""


@dataclass(frozen=True)
class CheckpointRetention:
    """``keep``: ``"last"`` (the latest checkpoint), ``"all"``, or the latest ``N >= 1``.

    ``best_by``: also keep the checkpoint of the round with the lowest value of this
    aggregated metric (ties: the earliest such round), for rounds that have it; ``None``
    keeps no best round.

    Raises:
        ConfigError: ``keep`` is none of these, or ``best_by`` is not a non-empty str.
    """

    keep: str | int = KEEP_LAST
    best_by: str | None = DEFAULT_BEST_BY

    def __post_init__(self) -> None:
        keep = self.keep
        if isinstance(keep, bool) or not (
            keep in (KEEP_LAST, KEEP_ALL) or (isinstance(keep, int) and keep >= 1)
        ):
            raise ConfigError(
                f'keep_checkpoints must be "last", "all" or a number of checkpoints >= 1, '
                f"got {keep!r}"
            )
        if self.best_by is not None and (not isinstance(self.best_by, str) or not self.best_by):
            raise ConfigError(f"best_by must be a metric name or None, got {self.best_by!r}")

    @classmethod
    def of(cls, value: object) -> CheckpointRetention:
        """A retention from ``"last"``, ``"all"``, ``N`` or a retention (returned as is).

        Raises:
            ConfigError: any other value.
        """
        if isinstance(value, CheckpointRetention):
            return value
        if isinstance(value, str | int):
            return cls(keep=value)
        raise ConfigError(f'keep_checkpoints must be "last", "all" or a number >= 1, got {value!r}')

    def describe(self) -> str:
        """``"the last and the best by validation_loss"``, ``"all"``, ..."""
        if self.keep == KEEP_ALL:
            return "all"
        latest = "the last" if self.keep == KEEP_LAST else f"the last {self.keep}"
        return f"{latest} and the best by {self.best_by}" if self.best_by else latest

    def to_delete(self, rounds: Sequence[RoundRecord], checkpoints: Iterable[int]) -> list[int]:
        """The round indices of ``checkpoints`` this retention drops, ascending."""
        saved = sorted(set(checkpoints))
        if self.keep == KEEP_ALL or not saved:
            return []
        count = 1 if self.keep == KEEP_LAST else int(self.keep)
        kept = set(saved[-count:])
        if self.best_by is not None:
            present = set(saved)
            scored = [
                (record.aggregated[self.best_by], record.round_index)
                for record in rounds
                if record.round_index in present and self.best_by in record.aggregated
            ]
            if scored:
                kept.add(min(scored)[1])
        return [index for index in saved if index not in kept]


__all__ = ["DEFAULT_BEST_BY", "KEEP_ALL", "KEEP_LAST", "CheckpointRetention"]
