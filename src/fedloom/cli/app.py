"""``fedloom`` commands. Each one parses its options and calls the library."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fedloom.errors import ExitCode, FedloomError, exit_code_for

app = typer.Typer(
    name="fedloom",
    help="Federated learning and federated analytics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the report.")] = Path("fedloom-report"),
    rounds: Annotated[int, typer.Option(min=1, help="FedAvg rounds.")] = 12,
    seed: Annotated[int, typer.Option(min=0, help="Seed for the split and the model.")] = 0,
    alpha: Annotated[
        float, typer.Option(help="Dirichlet concentration (smaller: less IID).")
    ] = 0.5,
) -> None:
    """Federated analytics and FedAvg on the digits dataset over 3 in-process pods."""
    from fedloom.demo import DemoOptions
    from fedloom.demo import main as run_demo

    report = run_demo(DemoOptions(out=out, rounds=rounds, seed=seed, alpha=alpha))
    if report.final_accuracy < 0.9:
        console.print(f"[red]final accuracy {report.final_accuracy:.3f} is below 0.90")
        raise typer.Exit(int(ExitCode.TASK_FAILED))


def main() -> None:
    """Entry point: run the app and turn fedloom errors into exit codes, no traceback.

    Usage errors are typer's (exit code 2, its own message).
    """
    try:
        app()
    except FedloomError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(int(exit_code_for(exc)))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted")
        sys.exit(int(ExitCode.INTERRUPTED))
