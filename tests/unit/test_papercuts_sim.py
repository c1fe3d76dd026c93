"""``fedloom sim``'s summary, report folder and training plot; the demo's plot (no processes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedloom.algorithms.ml import ModelSpec
from fedloom.algorithms.ml._plots import RoundCurves, plot_training
from fedloom.errors import ConfigError
from fedloom.scheduler import TaskStatus
from fedloom.simulation import ClientOutcome, ClientRecord, RoundReport, SimulationResult
from fedloom.simulation._report_cli import check_out_folder, summary, write_outputs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _record(client: int, round_index: int, *, failed: bool = False) -> ClientRecord:
    record = ClientRecord(client)
    if failed:
        record.status = TaskStatus.EXCEPTION
        return record
    loss = 1.0 / (round_index + 1) + client / 100
    record.finish(
        ClientOutcome(
            client,
            round_index,
            10,
            {"loss": loss, "accuracy": 0.5, "num_samples": 10},
            {"loss": loss + 0.1, "accuracy": 0.4, "num_samples": 2},
            0.01,
        ),
        worker=0,
    )
    return record


def _result(sampled: list[list[int]], failed: tuple[tuple[int, int], ...] = ()) -> Any:
    """A run of 20 clients with these clients sampled per round (no simulation ran)."""
    rounds = [
        RoundReport(
            r,
            [_record(c, r, failed=(r, c) in failed) for c in clients],
            0.1,
            metrics={
                "train_loss": 1.0 / (r + 1),
                "train_accuracy": 0.5,
                "validation_loss": 1.1 / (r + 1),
                "validation_accuracy": 0.4,
            },
        )
        for r, clients in enumerate(sampled)
    ]
    return SimulationResult(
        ModelSpec("mlp", {"in_features": 2, "hidden": [], "out_features": 2}),
        {"1.weight": np.zeros((2, 2), np.float32), "1.bias": np.zeros(2, np.float32)},
        rounds,
        startup_seconds=0.5,
    )


def _config() -> Any:
    from fedloom.simulation import DataSpec, SimulationConfig

    return SimulationConfig(
        ModelSpec("mlp", {"in_features": 2, "hidden": [], "out_features": 2}),
        DataSpec("synthetic", {"clients": 20, "samples": 4, "shape": [2]}),
    )


# --- 11a: the summary counts client-rounds and clients, each under its own name ----------


def test_the_summary_counts_client_rounds_and_distinct_clients() -> None:
    # a fraction of 20 clients per round: 3 rounds of 4, clients 1 and 3 sampled twice
    result = _result([[0, 1, 2, 3], [1, 3, 5, 7], [8, 9, 10, 11]], failed=((1, 7),))
    data = summary(_config(), result)
    assert data["client_rounds"] == {"finished": 11, "failed": 1, "interrupted_and_retried": 0}
    assert data["clients_sampled"] == 10
    assert "clients" not in data


# --- 11b: --out refuses a folder that holds a report, unless --force -------------------------


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_missing_an_empty_or_an_unrelated_folder_may_take_a_report(tmp_path: Path) -> None:
    check_out_folder(tmp_path / "new" / "report")
    check_out_folder(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    check_out_folder(tmp_path)


@pytest.mark.parametrize("held", ["summary.json", "final_model.safetensors", "rounds"])
def test_a_folder_with_a_report_is_refused_and_left_alone(tmp_path: Path, held: str) -> None:
    out = tmp_path / "report"
    out.mkdir()
    if held == "rounds":
        (out / "rounds").mkdir()
        (out / "rounds" / "round-0.json").write_text("{}")
    else:
        (out / held).write_text("an earlier run")
    before = _snapshot(out)
    with pytest.raises(ConfigError) as refused:
        check_out_folder(out)
    message = str(refused.value)
    assert str(out) in message and held in message and "--force" in message
    assert "\n" not in message
    assert _snapshot(out) == before
    check_out_folder(out, force=True)


def test_out_must_be_a_folder(tmp_path: Path) -> None:
    path = tmp_path / "report"
    path.write_text("a file")
    with pytest.raises(ConfigError, match="is not a folder"):
        check_out_folder(path, force=True)


def test_forced_outputs_replace_the_old_report_and_its_extra_rounds(tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = _result([[0, 1], [2, 3], [4, 5]])
    write_outputs(result, {"rounds": 3}, out)
    assert sorted(p.name for p in (out / "rounds").iterdir()) == [
        "round-0.json",
        "round-1.json",
        "round-2.json",
    ]
    (out / "notes.txt").write_text("mine")
    check_out_folder(out, force=True)
    files = write_outputs(_result([[6, 7]]), {"rounds": 1}, out)
    assert sorted(p.name for p in (out / "rounds").iterdir()) == ["round-0.json"]
    assert json.loads((out / "summary.json").read_text()) == {"rounds": 1}
    assert (out / "notes.txt").read_text() == "mine"
    assert out / "training.png" in files


# --- 11d / 12: one training plot, rounds from 0 ------------------------------------------


def _history(pods: int, rounds: int = 3) -> list[RoundCurves]:
    return [
        RoundCurves(
            r,
            {
                "train_loss": 1.0 / (r + 1),
                "validation_loss": 1.2 / (r + 1),
                "train_accuracy": 0.5 + r / 10,
                "validation_accuracy": 0.4 + r / 10,
            },
            {
                f"pod-{p}": {
                    "validation_loss": 1.2 / (r + 1) + p / 10,
                    "validation_accuracy": 0.4 + r / 10 - p / 100,
                }
                for p in range(pods)
            },
        )
        for r in range(rounds)
    ]


def test_the_plot_numbers_rounds_from_zero_and_draws_each_pod(tmp_path: Path) -> None:
    path = tmp_path / "training.png"
    figure = plot_training(_history(pods=3), path)
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    loss, accuracy = figure.axes
    for axis in (loss, accuracy):
        lines = axis.get_lines()
        assert len(lines) == 3 + 2  # a thin line per pod, thick train and validation
        assert all(list(line.get_xdata()) == [0, 1, 2] for line in lines)
        assert axis.get_xlim()[0] <= 0
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert labels == [
        "pod-0 (validation)",
        "pod-1 (validation)",
        "pod-2 (validation)",
        "train (aggregated)",
        "validation (aggregated)",
    ]


def test_many_clients_are_one_band_and_a_short_legend(tmp_path: Path) -> None:
    figure = plot_training(_history(pods=25), tmp_path / "training.png", members="client")
    for axis in figure.axes:
        assert len(axis.get_lines()) == 2
        assert len(axis.collections) == 1  # the min-max band
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert labels == [
        "validation: min-max over 25 clients",
        "train (aggregated)",
        "validation (aggregated)",
    ]


def test_the_simulation_plots_each_finished_client(tmp_path: Path) -> None:
    out = tmp_path / "report"
    write_outputs(_result([[0, 1], [1, 2]], failed=((1, 2),)), {}, out)
    assert (out / "training.png").read_bytes()[:8] == PNG_SIGNATURE
    report = _result([[0, 1], [1, 2]], failed=((1, 2),)).rounds[1]
    assert sorted(report.client_metrics()) == ["client-1"]
    assert report.client_metrics()["client-1"]["validation_accuracy"] == 0.4


def test_the_demo_plot_numbers_rounds_as_its_table_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fedloom.algorithms.ml._plots as plots
    from fedloom.cli import _demo as demo

    real = plots.plot_training
    figures: list[Any] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        figures.append(real(*args, **kwargs))
        return figures[-1]

    monkeypatch.setattr(plots, "plot_training", spy)
    history = [
        {
            "round": r.round,
            "pods": sorted(r.members),
            "aggregated": dict(r.aggregated),
            "per_pod": {pod: dict(m) | {"seconds": 0.1} for pod, m in r.members.items()},
            "seconds": 0.1,
        }
        for r in _history(pods=3)
    ]
    demo._plot(history, tmp_path / "training.png")
    assert (tmp_path / "training.png").read_bytes()[:8] == PNG_SIGNATURE
    (figure,) = figures
    for axis in figure.axes:
        # three pods and the two aggregated curves, all from round 0 like the table
        assert [line.get_xdata()[0] for line in axis.get_lines()] == [0] * 5
