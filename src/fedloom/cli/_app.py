"""``fedloom`` commands. Each one parses its options and calls the library."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from fedloom.errors import ExitCode, FedloomError, exit_code_for

app = typer.Typer(
    name="fedloom",
    help="Federated learning and federated analytics.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
hub_app = typer.Typer(help="Run and administer a hub (the message service).", no_args_is_help=True)
pod_app = typer.Typer(help="Run a pod next to its data.", no_args_is_help=True)
keys_app = typer.Typer(help="Identities: Ed25519 + X25519 key pairs.", no_args_is_help=True)
app.add_typer(hub_app, name="hub")
app.add_typer(pod_app, name="pod")
app.add_typer(keys_app, name="keys")


class _PublicNames(logging.Formatter):
    """Log lines name the public package (``fedloom.pod``), not the private module.

    ``fedloom.pod._pod`` is where the code lives; ``fedloom.pod`` is what a user filters by.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record, under its logger's name without private parts."""
        shown = logging.makeLogRecord(record.__dict__)
        shown.name = ".".join(part for part in record.name.split(".") if not part.startswith("_"))
        return super().format(shown)


@app.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at INFO level.")] = False,
) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(_PublicNames("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Folder for the report.")] = Path("fedloom-report"),
    rounds: Annotated[int, typer.Option(min=1, help="FedAvg rounds.")] = 12,
    seed: Annotated[int, typer.Option(min=0, help="Seed for the split and the model.")] = 0,
    alpha: Annotated[
        float, typer.Option(help="Dirichlet concentration (smaller: less IID).")
    ] = 0.5,
    in_process: Annotated[
        bool, typer.Option(help="Run the hub and pods in this process (in-memory hub).")
    ] = False,
) -> None:
    """Federated analytics and FedAvg on the digits dataset: a hub and 3 pods as processes."""
    from fedloom.cli._demo import DemoOptions
    from fedloom.cli._demo import main as run_demo

    report = run_demo(
        DemoOptions(out=out, rounds=rounds, seed=seed, alpha=alpha, in_process=in_process)
    )
    if report.final_accuracy < 0.9:
        console.print(f"[red]final accuracy {report.final_accuracy:.3f} is below 0.90")
        raise typer.Exit(int(ExitCode.TASK_FAILED))


@keys_app.command("new")
def keys_new(
    name: Annotated[str, typer.Argument(help="The identity's name (pod or modeller name).")],
    directory: Annotated[Path, typer.Option("--dir", help="Folder for the key files.")] = Path(
        "keys"
    ),
) -> None:
    """Make an identity: <dir>/<name>.key (mode 0600) and <dir>/<name>.pub.json."""
    from fedloom.crypto import Identity, save_identity

    key_path = save_identity(Identity.generate(name), directory)
    console.print(f"private key: {key_path} (keep it secret)")
    console.print(f"public identity: {key_path.with_suffix('.pub.json')} (give it to the hub)")


@hub_app.command("init")
def hub_init(
    data_dir: Annotated[Path, typer.Option(help="The hub's data folder.")] = Path("hub"),
    hostname: Annotated[
        list[str] | None, typer.Option(help="Names/IPs the hub is reached at (repeatable).")
    ] = None,
) -> None:
    """Make the hub's CA and server certificate in <data-dir>/tls."""
    from fedloom.hub._tls import DEFAULT_HOSTNAMES, init_hub_tls

    files = init_hub_tls(data_dir / "tls", hostnames=hostname or DEFAULT_HOSTNAMES)
    console.print(f"CA certificate for clients: {files.ca_certificate}")


@hub_app.command("register")
def hub_register(
    public_key: Annotated[Path, typer.Argument(help="The identity's .pub.json file.")],
    role: Annotated[str, typer.Option(help="pod or modeller.")],
    data_dir: Annotated[Path, typer.Option(help="The hub's data folder.")] = Path("hub"),
    replace: Annotated[bool, typer.Option(help="Replace a registered key.")] = False,
) -> None:
    """Allow an identity on the hub (run while the hub is stopped)."""
    from fedloom.crypto import load_public_identity
    from fedloom.hub._store import HubStore

    public = load_public_identity(public_key)
    with HubStore(data_dir) as store:
        store.register(public, role, replace=replace)
    console.print(f"registered {role} {public.name!r}")


@hub_app.command("start")
def hub_start(
    *,
    data_dir: Annotated[Path, typer.Option(help="The hub's data folder.")] = Path("hub"),
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="0 picks a free port.")] = 7800,
    insecure: Annotated[
        bool, typer.Option(help="Plaintext gRPC (no TLS): only for local experiments.")
    ] = False,
    mutual_tls: Annotated[bool, typer.Option(help="Require client certificates.")] = False,
    max_message_mb: Annotated[
        float, typer.Option(min=0.001, help="Largest message accepted, in MiB.")
    ] = 2048.0,
    clock_window: Annotated[
        float, typer.Option(min=1.0, help="Accepted clock difference, in seconds.")
    ] = 300.0,
) -> None:
    """Run the hub until SIGTERM/SIGINT; prints its address once it listens."""
    import asyncio

    from fedloom.hub._server import HubSettings, serve_hub
    from fedloom.hub._tls import load_hub_tls

    settings = HubSettings(
        data_dir=data_dir,
        host=host,
        port=port,
        tls=None if insecure else load_hub_tls(data_dir / "tls"),
        require_client_auth=mutual_tls,
        insecure=insecure,
        max_message_bytes=min(int(max_message_mb * (1 << 20)), 2 << 30),
        clock_window=clock_window,
    )

    def ready(bound: int) -> None:
        print(f"fedloom hub listening on {host}:{bound}", flush=True)

    asyncio.run(serve_hub(settings, on_ready=ready))


@pod_app.command("start")
def pod_start(
    config: Annotated[Path, typer.Option(help="The pod's TOML configuration.")],
) -> None:
    """Run a pod until SIGTERM/SIGINT (reconnects when the hub goes away).

    Logs, without -v too, its connection attempts and one line per task it handles.
    """
    from fedloom.pod._config import load_pod_config
    from fedloom.pod._daemon import run_pod

    # the pod's own lines (connecting, one per task) at INFO; other libraries stay quiet
    pod_logger = logging.getLogger("fedloom.pod")
    if pod_logger.getEffectiveLevel() > logging.INFO:
        pod_logger.setLevel(logging.INFO)
    pod = load_pod_config(config)
    run_pod(pod, on_ready=lambda: print(f"fedloom pod {pod.name} online", flush=True))


@app.command("run")
def run_task(
    task_file: Annotated[Path, typer.Argument(help="The task's TOML file.")],
    json_output: Annotated[
        bool, typer.Option("--json", help="Print only the summary, as one JSON document.")
    ] = False,
    report_dir: Annotated[
        Path | None,
        typer.Option(help="For inference tasks: write each pod's CSV report (<pod>.csv) here."),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="Go on with this experiment of the task's store from its last checkpoint "
            "(after a crash or a failed run); the task must be the same, rounds may grow."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace reports already in --report-dir.")] = False,
) -> None:
    """Run a task on pods through a hub: a progress bar per pod, then a summary.

    Without --json the summary is for people (what each pod did, the rounds or the
    statistics, where the checkpoints are); with --json stdout holds one JSON document.
    """
    from fedloom.cli._run import run_command

    run_command(
        console,
        task_file,
        json_output=json_output,
        report_dir=report_dir,
        resume=resume,
        force=force,
    )


@app.command("list")
def list_names(
    kind: Annotated[
        str | None,
        typer.Argument(
            help="Only this kind: protocols, models, algorithms, statistics, datasources, "
            "loaders, hooks, reducers, image-outputs, client-data."
        ),
    ] = None,
    plugin: Annotated[
        list[str] | None,
        typer.Option(help="Import this module first, to list its names too (repeatable)."),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON only.")] = False,
) -> None:
    """List the names tasks, pod.toml files and simulations may use (plugins included)."""
    import json

    from fedloom._registry import import_plugins
    from fedloom.cli._catalogue import catalogue, catalogue_table
    from fedloom.cli._report import people_console

    import_plugins(tuple(plugin or ()), where="--plugin")
    listing = catalogue(kind)
    if json_output:
        print(json.dumps(listing))
        return
    people_console().print(catalogue_table(listing))


@app.command("sim")
def simulate(
    config_file: Annotated[Path, typer.Argument(help="The simulation's TOML file.")],
    *,
    out: Annotated[
        Path | None,
        typer.Option(
            help="Write per-round reports, summary.json, training.png and the final model "
            "here (a folder that already holds a report is refused unless --force)."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite the report already in --out.")
    ] = False,
    backend: Annotated[
        str | None,
        typer.Option(help="Override the \\[simulation] table's backend: process, thread, ray."),
    ] = None,
    num_parallels: Annotated[
        int | None, typer.Option(help="Override the \\[simulation] table's num_parallels.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Simulate a federation: many virtual clients on this machine (or on Ray)."""
    import dataclasses

    from fedloom.cli._simulate import run_and_report
    from fedloom.simulation._config import load_simulation_file

    loaded = load_simulation_file(config_file)
    changes: dict[str, Any] = {}
    if backend is not None:
        changes["backend"] = backend
    if num_parallels is not None:
        changes["num_parallels"] = num_parallels
    config = dataclasses.replace(loaded.config, **changes) if changes else loaded.config
    run_and_report(
        config,
        console,
        out=out,
        force=force,
        json_output=json_output,
        ray_address=loaded.ray_address,
    )


def main() -> None:
    """Entry point: run the app and turn fedloom errors into exit codes, no traceback.

    Usage errors are typer's (exit code 2, its own message).
    """
    import os

    from fedloom.worker._lifetime import follow_launcher

    # gRPC's C core writes to stderr past logging (a line per failed TLS handshake, at
    # every reconnect): errors only, unless the user set GRPC_VERBOSITY; before grpc loads
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    follow_launcher(signal.SIGTERM)
    try:
        app()
    except FedloomError as exc:
        # the message may quote a pod's words: shown as they are, never read as markup;
        # one line, however narrow the terminal (or 80 columns when stderr is a pipe)
        console.print("[red]error:[/red]", Text(str(exc)), soft_wrap=True)
        sys.exit(int(exit_code_for(exc)))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted")
        sys.exit(int(ExitCode.INTERRUPTED))
