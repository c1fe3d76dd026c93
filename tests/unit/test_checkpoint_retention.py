"""Which round checkpoints an experiment keeps: the last and the best by default."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedloom import FedAvg, ModelSpec, SqliteExperimentStore, run_local
from fedloom.errors import ConfigError
from fedloom.pod import ArraySource
from fedloom.store import CheckpointRetention, RoundRecord


def _rounds(losses: list[float | None]) -> list[RoundRecord]:
    return [
        RoundRecord(index, {} if loss is None else {"validation_loss": loss}, {}, 0.0)
        for index, loss in enumerate(losses)
    ]


@pytest.mark.parametrize(
    ("keep", "losses", "deleted"),
    [
        ("last", [0.9, 0.5, 0.7, 0.8], [0, 2]),  # keeps 3 (last) and 1 (best)
        ("last", [0.9, 0.8, 0.7], [0, 1]),  # the last is the best
        ("last", [None, None, None], [0, 1]),  # no validation: the last only
        ("last", [0.5, 0.9, 0.5, 0.9], [1, 2]),  # a tie keeps the earliest best
        (2, [0.1, 0.5, 0.7, 0.8], [1]),  # the last two, and the best
        (5, [0.9, 0.5], []),
        ("all", [0.9, 0.5, 0.7], []),
    ],
)
def test_what_each_retention_drops(
    keep: str | int, losses: list[float | None], deleted: list[int]
) -> None:
    retention = CheckpointRetention.of(keep)
    assert retention.to_delete(_rounds(losses), range(len(losses))) == deleted


def test_only_rounds_that_still_have_a_checkpoint_can_be_the_best() -> None:
    # round 0 was the best but its checkpoint is gone: the best of the rest is kept
    assert CheckpointRetention().to_delete(_rounds([0.1, 0.5, 0.7, 0.8]), [1, 2, 3]) == [2]
    assert CheckpointRetention(best_by=None).to_delete(_rounds([0.1, 0.5]), [0, 1]) == [0]
    assert CheckpointRetention().to_delete(_rounds([]), []) == []


@pytest.mark.parametrize("keep", [0, -1, 1.5, True, "some", None, [1]])
def test_a_bad_retention_is_a_config_error(keep: object) -> None:
    with pytest.raises(ConfigError, match="keep_checkpoints must be"):
        CheckpointRetention.of(keep)


def test_descriptions_say_what_is_kept() -> None:
    assert CheckpointRetention().describe() == "the last and the best by validation_loss"
    assert CheckpointRetention.of(3).describe() == "the last 3 and the best by validation_loss"
    assert CheckpointRetention.of("all").describe() == "all"


def _pods() -> dict[str, ArraySource]:
    rng = np.random.default_rng(3)
    pods = {}
    for index in range(2):
        x = rng.normal(size=(60, 3)).astype(np.float32)
        pods[f"pod-{index}"] = ArraySource(x, (x[:, 0] + x[:, 1] > 0).astype(np.int64))
    return pods


@pytest.mark.parametrize(("keep", "latest"), [("last", 1), (2, 2)])
def test_an_experiment_keeps_the_last_and_the_best_checkpoint_files(
    tmp_path: Path, keep: str | int, latest: int
) -> None:
    fedavg = FedAvg(
        model=ModelSpec("mlp", {"in_features": 3, "hidden": [8], "out_features": 2}), rounds=6
    )
    with SqliteExperimentStore(tmp_path / "alice.db") as store:
        run = run_local(fedavg, _pods(), modeller_store=store, keep_checkpoints=keep)
        assert run.experiment_id is not None
        record = store.get_experiment(run.experiment_id)
        assert [r.round_index for r in record.rounds] == list(range(6))  # every round's metrics
        best = min(record.rounds, key=lambda r: r.aggregated["validation_loss"]).round_index
        kept = sorted({best, *range(6 - latest, 6)})
        assert [c.round_index for c in record.checkpoints] == kept
        final = store.load_checkpoint(run.experiment_id)
        assert all(np.array_equal(final[k], v) for k, v in run.result.parameters.items())
    folder = tmp_path / "checkpoints" / run.experiment_id
    assert sorted(path.name for path in folder.iterdir()) == [
        f"round-{index:05d}.safetensors" for index in kept
    ]
