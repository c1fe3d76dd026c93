"""``fedloom run TASK.toml``: run a task through a hub and tell a person what happened.

Progress bars go to stderr while the task runs. At the end, stdout gets either a human
summary (what each pod did, with the reason and message of a pod that rejected or
aborted; the rounds table of FedAvg; the statistics of analytics; where the experiment's
checkpoints are) or, with ``--json``, one JSON document and nothing else. When the run
fails or is interrupted after its experiment started, stderr says which experiment it
was and the exact command that resumes it.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import signal
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.text import Text

from fedloom._events import Event, EventKind, EventStream
from fedloom.cli._progress import LiveProgress
from fedloom.cli._report import people_console, task_report
from fedloom.errors import ConfigError, FedloomError
from fedloom.modeller import TaskResult
from fedloom.modeller._remote import run_task_file
from fedloom.modeller._report import describe
from fedloom.modeller._task_file import TaskFile, load_task_file
from fedloom.store import SqliteExperimentStore

T = TypeVar("T")


@dataclass
class _Watch:
    """What the running task has told us so far (for the words after a failure)."""

    experiment_id: str | None = None
    last_round: int | None = None

    def started(self, experiment_id: str) -> None:
        self.experiment_id = experiment_id

    def on_event(self, event: Event) -> None:
        index = event.fields.get("round")
        if event.kind is EventKind.ROUND_FINISHED and isinstance(index, int):
            self.last_round = index


def run_command(
    console: Console,
    task_file: Path,
    *,
    json_output: bool = False,
    report_dir: Path | None = None,
    resume: str | None = None,
    force: bool = False,
) -> None:
    """Run the task file's task and print its summary (see the module docstring).

    Raises:
        FedloomError: the task failed (after the resume hint, when there is one).
        KeyboardInterrupt: Ctrl-C or SIGTERM (likewise).
    """
    task = load_task_file(task_file)
    if report_dir is not None:
        _check_report_dir(task, report_dir, force)
    watch = _Watch()
    rounds = getattr(task.protocol, "rounds", None)
    events = EventStream()
    events.subscribe(watch.on_event)
    try:
        with LiveProgress(
            console, task.pods, rounds=rounds if isinstance(rounds, int) else None
        ) as progress:
            events.subscribe(progress.on_event)
            result = asyncio.run(
                _cancel_on_sigterm(
                    run_task_file(
                        task,
                        events=events,
                        on_experiment=watch.started,
                        resume=resume,
                    )
                )
            )
    except (FedloomError, KeyboardInterrupt):
        _resume_hint(console, task, task_file, watch)
        raise
    summary = summarise(task, result)
    if report_dir is not None:
        summary["reports"] = [
            str(path) for path in _write_reports(result.result, report_dir, force)
        ]
    if json_output:
        print(json.dumps(summary, default=str), flush=True)
        return
    history = getattr(result.result, "history", None)
    statistics = getattr(result.result, "statistics", None)
    people_console().print(
        task_report(
            summary,
            task.pods,
            history=[row.to_dict() for row in history] if history else (),
            statistics=statistics if isinstance(statistics, dict) else None,
        )
    )


def summarise(task: TaskFile, result: TaskResult[Any]) -> dict[str, Any]:
    """The JSON summary: the outcome, the protocol's result, and the kept checkpoints."""
    summary: dict[str, Any] = {
        **describe(result),
        "result": task.protocol.summarise(result.result),
    }
    if task.store_path is not None and result.experiment_id is not None:
        with SqliteExperimentStore(task.store_path) as store:
            kept = store.get_experiment(result.experiment_id).checkpoints
            folder = store.checkpoint_folder(result.experiment_id)
        summary["checkpoints"] = {
            "folder": str(folder),
            "keep": task.keep_checkpoints.describe(),
            "rounds": [ref.round_index for ref in kept],
            # the final model, e.g. for an inference task's model_file
            "final": kept[-1].path if kept else None,
        }
    return summary


def _resume_hint(console: Console, task: TaskFile, task_file: Path, watch: _Watch) -> None:
    """After a failure: which experiment stopped, where it is, how to go on with it."""
    if watch.experiment_id is None or not task.protocol.resumable:
        return
    assert task.store_path is not None  # an experiment id comes from the store
    done = (
        "before its first round" if watch.last_round is None else f"after round {watch.last_round}"
    )
    with SqliteExperimentStore(task.store_path) as store:
        folder = store.checkpoint_folder(watch.experiment_id)
    console.print(
        Text(f"experiment {watch.experiment_id} stopped {done}; its checkpoints are in {folder}"),
        soft_wrap=True,
    )
    command = shlex.join(["fedloom", "run", str(task_file), "--resume", watch.experiment_id])
    console.print(Text(f"go on with: {command}"), soft_wrap=True)


def _check_report_dir(task: TaskFile, folder: Path, force: bool) -> None:
    """Before the run: reports go to an inference task's folder, replacing nothing unless ``force``.

    Raises:
        ConfigError: another protocol, or a pod's report is already there.
    """
    if task.protocol.name != "inference":
        raise ConfigError("--report-dir is for inference tasks, which return report rows")
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--report-dir {folder} is a file, not a folder")
    there = [folder / f"{pod}.csv" for pod in task.pods if (folder / f"{pod}.csv").exists()]
    if there and not force:
        raise ConfigError(
            f"--report-dir {folder} already holds {there[0].name}; pass --force to replace "
            "the reports of this task's pods"
        )


def _write_reports(result: Any, folder: Path, force: bool) -> list[Path]:
    """Each pod's inference report rows (and failures) as ``<folder>/<pod>.csv``."""
    from fedloom.algorithms.inference import write_report_csv
    from fedloom.protocols import InferenceResult

    if not isinstance(result, InferenceResult):
        raise ConfigError("--report-dir is for inference tasks, which return report rows")
    folder.mkdir(parents=True, exist_ok=True)
    return [
        write_report_csv(
            [*rows, *result.failures.get(pod, [])], folder / f"{pod}.csv", overwrite=force
        )
        for pod, rows in sorted(result.rows.items())
    ]


async def _cancel_on_sigterm(coro: Coroutine[Any, Any, T]) -> T:
    """Await ``coro``; SIGTERM cancels it like Ctrl-C does.

    A cancelled run tells its pods first, in whatever phase it was: TASK_CANCEL, and each
    pod's TASK_ABORT(CANCELLED_BY_MODELLER) answer awaited, within
    ``fedloom.modeller._cancel.TELL_PODS_SECONDS`` (5 s) in all; closing the hub
    connection afterwards is bounded too (5 s).
    """
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await coro
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
