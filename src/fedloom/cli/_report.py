"""A task's outcome for people: the tables and lines ``fedloom run`` and the demo print.

Everything here reads plain summaries (:func:`~fedloom.modeller._report.describe`,
``TaskProtocol.summarise``, round rows as :meth:`RoundMetrics.to_dict
<fedloom.protocols.RoundMetrics.to_dict>` writes them) and returns rich renderables;
what pods wrote (their error messages) is shown as plain text, never read as markup.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from fedloom.modeller._report import NO_NEW_DATA

__all__ = [
    "PIPE_WIDTH",
    "outcome_lines",
    "people_console",
    "rounds_table",
    "statistics_table",
    "task_report",
]

ROUND_METRICS = ("train_loss", "train_accuracy", "validation_loss", "validation_accuracy")

PIPE_WIDTH = 200
"""Columns of a console whose output is not a terminal: rich would take 80 and cut the
tables' numbers; a table is only as wide as its content, so more costs nothing."""


def people_console(file: TextIO | None = None) -> Console:
    """A console for summaries people read, on stdout by default (see :data:`PIPE_WIDTH`)."""
    stream = file or sys.stdout
    width = None if stream.isatty() else PIPE_WIDTH
    return Console(file=stream, width=width, highlight=False)


def rounds_table(history: Sequence[Mapping[str, Any]], title: str = "FedAvg rounds") -> Table:
    """One row per round (numbered from 0): pods, the aggregated metrics, seconds."""
    table = Table(title=title)
    for heading in ("round", "pods", "train loss", "train acc", "val loss", "val acc", "s"):
        table.add_column(heading, justify="right")
    for row in history:
        metrics = row.get("aggregated", {})
        table.add_row(
            str(row.get("round")),
            str(len(row.get("pods", ()))),
            *(_number(metrics.get(key)) for key in ROUND_METRICS),
            _number(row.get("seconds"), digits=2),
        )
    return table


def statistics_table(statistics: Mapping[str, Mapping[str, Any]]) -> Table:
    """Federated statistics: a row per column, a column per scalar statistic or quantile.

    Numbers show 6 significant digits; histograms are left out (the JSON summary has them).
    """
    headings: list[str] = []
    rows: dict[str, dict[str, str]] = {}
    for column, values in statistics.items():
        cells = rows.setdefault(str(column), {})
        for name, value in values.items():
            if name == "quantiles" and isinstance(value, Mapping):  # {"0.5": value}
                for quantile, number in value.items():
                    cells[f"q{quantile}"] = _significant(number)
            elif isinstance(value, int | float) and not isinstance(value, bool):
                cells[str(name)] = _significant(value)
        headings += [key for key in cells if key not in headings]
    table = Table(title="statistics over all pods")
    table.add_column("column")
    for heading in headings:
        table.add_column(heading, justify="right")
    for column, cells in rows.items():
        table.add_row(Text(column), *(cells.get(heading, "") for heading in headings))
    return table


def outcome_lines(described: Mapping[str, Any], pods: Iterable[str]) -> list[Text]:
    """What happened to each pod: accepted, rejected or aborted (code and message)."""
    lines = [
        Text(
            f"task {described['task_id'][:12]} ({described['protocol']}): "
            f"{len(described['accepted'])} of {len(list(pods))} pods accepted, "
            f"{described['seconds']:.1f} s"
        )
    ]
    for kind in ("rejected", "aborted"):
        for pod, report in described.get(kind, {}).items():
            line = Text(f"  {pod} {kind}: ", style="yellow")
            line.append(f"{report['reason']}: {report['message']}".rstrip(": "))
            lines.append(line)
    result = described.get("result", {})
    for pod in result.get(NO_NEW_DATA, []) if isinstance(result, Mapping) else []:
        lines.append(Text(f"  {pod}: no new files since the last run: nothing to do"))
    return lines


def task_report(
    summary: Mapping[str, Any],
    pods: Iterable[str],
    *,
    history: Sequence[Mapping[str, Any]] = (),
    statistics: Mapping[str, Mapping[str, Any]] | None = None,
) -> RenderableType:
    """The whole human summary of ``fedloom run``: outcome, then the protocol's result."""
    parts: list[RenderableType] = list(outcome_lines(summary, pods))
    if history:
        parts.append(rounds_table(history))
    if statistics:
        parts.append(statistics_table(statistics))
    result = summary.get("result", {})
    if not history and not statistics and isinstance(result, Mapping):
        for key, value in result.items():
            if key == NO_NEW_DATA:
                continue
            if isinstance(value, Mapping) and any(isinstance(v, Mapping) for v in value.values()):
                parts.append(Text(f"{key}:"))  # e.g. each pod's result: a line each
                parts += [Text(f"  {name}: {_plain(item)}") for name, item in value.items()]
            else:
                parts.append(Text(f"{key}: {_plain(value)}"))
    for path in summary.get("reports", []):
        parts.append(Text(f"report: {path}"))
    checkpoints = summary.get("checkpoints")
    if summary.get("experiment_id"):
        line = f"experiment {summary['experiment_id']}"
        if isinstance(checkpoints, Mapping) and checkpoints.get("folder"):
            kept = ", ".join(str(index) for index in checkpoints.get("rounds", [])) or "none"
            line += (
                f"; checkpoints ({checkpoints.get('keep')}) in {checkpoints['folder']}: "
                f"rounds {kept}"
            )
        parts.append(Text(line))
        if isinstance(checkpoints, Mapping) and checkpoints.get("final"):
            parts.append(Text(f"final model: {checkpoints['final']}"))
    return Group(*parts)


def _plain(value: Any) -> str:
    if isinstance(value, Mapping):
        return ", ".join(f"{key} {_plain(item)}" for key, item in value.items()) or "-"
    if isinstance(value, list | tuple):
        return ", ".join(_plain(item) for item in value) or "-"
    if isinstance(value, float):
        return _number(value)
    return str(value)


def _significant(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value:.6g}"


def _number(value: object, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
