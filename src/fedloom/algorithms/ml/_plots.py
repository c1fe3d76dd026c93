"""Training curves as a PNG: loss and accuracy per round, aggregated and per participant.

One picture for the demo (participants are pods) and ``fedloom sim`` (virtual clients).
Rounds are numbered from 0, as in the round tables and the JSON reports. The aggregated
train and validation curves are thick black lines; the participants' own curves (their
validation metric, or their train metric when none has a validation split) are drawn
beside them:

- up to :data:`DEFAULT_MAX_MEMBER_LINES` participants: a thin coloured line each, named in
  the legend;
- more: one grey band from the lowest to the highest value among the round's
  participants, so that the legend stays three entries long for any number of clients.

matplotlib is imported on first use and draws on an Agg canvas of its own: no pyplot, no
global backend switch, nothing left open.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from fedloom.algorithms.ml._local_round import METRIC_NAMES

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["DEFAULT_MAX_MEMBER_LINES", "RoundCurves", "plot_training"]

DEFAULT_MAX_MEMBER_LINES = 10
"""At most this many participants get a line of their own; more are drawn as a band."""


@dataclass(frozen=True)
class RoundCurves:
    """One round's metrics: the aggregate and each participant's, as flat metrics.

    Flat metrics are :func:`~fedloom.algorithms.ml.flat_metrics` keys (``train_loss``,
    ``validation_accuracy``, ...); other keys are ignored.
    """

    round: int
    aggregated: Mapping[str, float]
    members: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


def plot_training(
    rounds: Sequence[RoundCurves],
    path: Path | None = None,
    *,
    members: str = "pod",
    max_member_lines: int = DEFAULT_MAX_MEMBER_LINES,
) -> Figure:
    """Draw loss and accuracy per round (see the module docstring); save a PNG at ``path``.

    ``members`` names a participant in the legend ("pod", "client"). Returns the figure.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(11, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    names = sorted({name for r in rounds for name in r.members}, key=_natural)
    phase = _member_phase(rounds)
    for axis, metric in ((left, "loss"), (right, "accuracy")):
        key = f"{phase}_{metric}"
        if len(names) <= max_member_lines:
            _member_lines(axis, rounds, names, key, phase)
        else:
            _member_band(axis, rounds, key, f"{phase}: min-max over {len(names)} {members}s")
        for aggregated, style in (("train", "--"), ("validation", "-")):
            values = [_value(r.aggregated, f"{aggregated}_{metric}") for r in rounds]
            if any(math.isfinite(v) for v in values):
                axis.plot(
                    [r.round for r in rounds],
                    values,
                    color="black",
                    linestyle=style,
                    linewidth=2.5,
                    marker="o",
                    label=f"{aggregated} (aggregated)",
                )
        axis.set(title=f"{metric} per round", xlabel="round (from 0)", ylabel=metric)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    right.set_ylim(0, 1)
    handles, labels = left.get_legend_handles_labels()
    if handles:
        figure.legend(
            handles,
            labels,
            loc="outside lower center",
            ncol=min(len(labels), 6),
            fontsize="small",
            frameon=False,
        )
    if path is not None:
        figure.savefig(path, dpi=100)
    return figure


def _member_phase(rounds: Sequence[RoundCurves]) -> str:
    """``validation`` when some participant has a validation metric, else ``train``."""
    for r in rounds:
        for metrics in r.members.values():
            if any(f"validation_{name}" in metrics for name in METRIC_NAMES):
                return "validation"
    return "train"


def _member_lines(
    axis: Axes, rounds: Sequence[RoundCurves], names: list[str], key: str, phase: str
) -> None:
    from matplotlib import colormaps

    colours = colormaps["tab10"]
    xs = [r.round for r in rounds]
    for index, name in enumerate(names):
        values = [_value(r.members.get(name, {}), key) for r in rounds]
        axis.plot(
            xs,
            values,
            color=colours(index % 10),
            linewidth=1,
            alpha=0.8,
            marker=".",
            label=f"{name} ({phase})",
        )


def _member_band(axis: Axes, rounds: Sequence[RoundCurves], key: str, label: str) -> None:
    low: list[float] = []
    high: list[float] = []
    for r in rounds:
        values = [v for m in r.members.values() if math.isfinite(v := _value(m, key))]
        low.append(min(values, default=math.nan))
        high.append(max(values, default=math.nan))
    axis.fill_between([r.round for r in rounds], low, high, color="grey", alpha=0.3, label=label)


def _value(metrics: Mapping[str, float], key: str) -> float:
    value = metrics.get(key)
    return float(value) if isinstance(value, int | float) else math.nan


def _natural(name: str) -> list[str | int]:
    """Sort key that puts ``client-9`` before ``client-10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]
