"""Paper cuts a new user hits with the hub and pod commands, each driven as a user would.

Real `fedloom` processes throughout (hub, pod, modeller); the deployment's keys, CA and
registrations are made with the library once per module, since they are not what these
tests are about.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedloom.errors import HubUnavailableError
from fedloom.hub import Identity
from fedloom.hub._server import HubServer, HubSettings
from fedloom.hub._store import HubStore
from fedloom.hub._tls import init_hub_tls
from fedloom.pod import save_identity
from fedloom.transport._grpc_mailbox import GrpcMailbox

from .cli_kit import daemon, pod_toml, start_hub, stop
from .hub_kit import connect, free_port, register
from .hub_kit import start_hub as start_hub_in_process
from .test_demo_cli import fedloom_command, run_cli


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """keys/ (alice, pod-a), hub/ with its CA and both registered, and a.csv (50 rows)."""
    folder = tmp_path_factory.mktemp("deployment")
    with HubStore(folder / "hub") as store:
        for name, role in (("alice", "modeller"), ("pod-a", "pod")):
            identity = Identity.generate(name)
            save_identity(identity, folder / "keys")
            store.register(identity.public(), role)
    init_hub_tls(folder / "hub" / "tls")
    data = pd.DataFrame({"x": np.arange(50, dtype=float), "label": np.arange(50) % 2})
    data.to_csv(folder / "a.csv", index=False)
    return folder


def _popen(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*fedloom_command(), *args],
        cwd=cwd,
        env=os.environ | {"COLUMNS": "300"},  # rich wraps what is longer than that
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str], timeout: float = 30) -> tuple[str, str]:
    """Wait for ``process``; kill it (and fail) if it is still running after ``timeout``."""
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate(timeout=20)
        message = f"still running after {timeout} s: {out[-2000:]} {err[-2000:]}"
        raise AssertionError(message) from None


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# --- item 1: two hubs on one port -----------------------------------------------------------


def test_a_second_hub_on_a_busy_port_fails_at_once_naming_the_port(deployment: Path) -> None:
    hub, address = start_hub(deployment)
    try:
        port = address.rsplit(":", 1)[1]
        init_hub_tls(deployment / "hub2" / "tls")
        began = time.monotonic()
        second = _popen(["hub", "start", "--data-dir", "hub2", "--port", port], deployment)
        out, err = _finish(second, timeout=15)
        assert time.monotonic() - began < 20
        assert second.returncode != 0
        assert "listening" not in out
        assert _lines(err) == [
            f"error: cannot listen on 127.0.0.1:{port}: port {port} is already in use "
            "(is another hub running there?)"
        ], err
    finally:
        stop(hub)


async def test_hub_server_start_refuses_a_port_another_socket_listens_on(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        hub = HubServer(HubSettings(data_dir=tmp_path, insecure=True, port=port))
        try:
            with pytest.raises(HubUnavailableError, match=f"127.0.0.1:{port}.*in use"):
                await hub.start()
        finally:
            await hub.stop()


# --- item 2c: Ctrl-C on a hub with connected pods -------------------------------------------


def test_sigint_stops_a_hub_with_a_connected_pod_cleanly(deployment: Path) -> None:
    hub, address = start_hub(deployment)
    pod = None
    try:
        (deployment / "pod-sigint.toml").write_text(pod_toml(address))
        pod, _ = daemon(["pod", "start", "--config", "pod-sigint.toml"], deployment, "online")
        hub.send_signal(signal.SIGINT)
        _, err = _finish(hub)
        assert hub.returncode == 0, err
        assert "Traceback" not in err and "Exception" not in err and "Error" not in err, err
    finally:
        if hub.poll() is None:
            stop(hub)
        if pod is not None:
            stop(pod)


async def test_a_stopping_hub_ends_its_connections_instead_of_waiting_out_the_grace(
    tmp_path: Path,
) -> None:
    identities = register(tmp_path, {"pod-a": "pod", "alice": "modeller"})
    hub = await start_hub_in_process(tmp_path)
    mailbox = await connect(hub.port, identities["pod-a"], accepts=["alice"])
    began = time.monotonic()
    await hub.stop(grace=30.0)
    took = time.monotonic() - began
    await mailbox.close()
    assert took < 10.0


# --- items 2d and 6: a hub that is down -----------------------------------------------------


async def test_a_connect_that_times_out_leaves_no_unretrieved_future() -> None:
    problems: list[dict[str, Any]] = []

    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: problems.append(context))
    address = f"127.0.0.1:{free_port()}"
    mailbox = GrpcMailbox(Identity.generate("alice"), address, insecure=True)
    with pytest.raises(HubUnavailableError):
        await mailbox.connect(timeout=0.5)
    del mailbox
    gc.collect()
    await asyncio.sleep(0)

    assert problems == []


def test_pod_and_modeller_against_a_hub_that_is_down(deployment: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    (deployment / "pod-down.toml").write_text(pod_toml(address))
    (deployment / "task-down.toml").write_text(
        f'hub = "{address}"\nidentity = "keys/alice.key"\npods = ["pod-a"]\n'
        '[tls]\nca = "hub/tls/ca.crt"\n[task]\nprotocol = "analytics"\n'
        '[task.config.request]\nstatistics = ["count"]\ncolumns = ["x"]\n'
    )
    pod = _popen(["pod", "start", "--config", "pod-down.toml"], deployment)
    try:
        began = time.monotonic()
        done = run_cli("run", "task-down.toml", cwd=deployment)
        waited = time.monotonic() - began
    finally:
        pod.send_signal(signal.SIGTERM)
        pod_out, pod_err = _finish(pod)
    # the modeller: one error line, nothing else
    assert done.returncode != 0
    assert _lines(done.stderr) == [
        f"error: could not connect to the hub at {address} within 15.0 s (last attempt: "
        "UNAVAILABLE: Failed to connect to remote host: Connection refused)"
    ], done.stderr
    # the pod: one line per attempt, with back-off, without -v; never "online"
    assert pod.returncode == 0, pod_err
    assert "online" not in pod_out and "Traceback" not in pod_err
    retries = [line for line in _lines(pod_err) if "retrying in" in line]
    assert len(retries) >= 3, pod_err
    assert all(address in line for line in retries), pod_err
    delays = [float(re.findall(r"retrying in ([0-9.]+) s", line)[0]) for line in retries]
    assert delays[-1] > delays[0]
    assert len(retries) <= waited / 1.0 + 3, pod_err  # back-off, not a flood


# --- items 2a and 7: what `pod start` checks before it connects ------------------------------


def test_pod_start_with_a_plugin_that_cannot_be_imported_is_one_line(deployment: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    config = deployment / "pod-plugin.toml"
    config.write_text(pod_toml(address, top='plugins = ["no_such_fedloom_plugin"]\n'))
    done = run_cli("pod", "start", "--config", "pod-plugin.toml", cwd=deployment)
    assert done.returncode == 3
    assert "online" not in done.stdout
    assert _lines(done.stderr) == [
        f"error: {config}: plugins: cannot import plugin module 'no_such_fedloom_plugin': "
        "no such module (is it installed, or on PYTHONPATH?)"
    ], done.stderr


def test_pod_start_names_every_bad_dataset_and_does_not_connect(deployment: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    (deployment / "nolabel.csv").write_text("x,y\n1,2\n")
    config = deployment / "pod-datasets.toml"
    config.write_text(
        pod_toml(address)
        + '[datasets.missing]\nkind = "csv"\npath = "missing.csv"\n'
        + '[datasets.nolabel]\nkind = "csv"\npath = "nolabel.csv"\nlabel_column = "label"\n'
        + '[datasets.scans]\nkind = "folder"\npath = "scans"\n'
    )
    done = run_cli("pod", "start", "--config", "pod-datasets.toml", cwd=deployment)
    assert done.returncode == 4
    assert "online" not in done.stdout
    assert _lines(done.stderr) == [
        f"error: {config}: 3 of the 4 datasets cannot be used:",
        f"  datasets.missing: no such data file: '{deployment / 'missing.csv'}'",
        "  datasets.nolabel: label column 'label' is not in the dataset; columns present: 'x', 'y'",
        f"  datasets.scans: the data folder '{deployment / 'scans'}' does not exist",
    ], done.stderr


# --- items 6 and 2b: one line per task; a model file given by its path -----------------------


def test_pod_start_logs_one_line_per_task_and_a_task_file_takes_a_model_file_path(
    deployment: Path,
) -> None:
    from PIL import Image
    from safetensors.numpy import save_file

    from fedloom.algorithms.ml import ModelSpec, build_model, state_to_arrays

    (deployment / "images").mkdir(exist_ok=True)
    for index in range(3):
        pixels = np.full((4, 4, 3), index * 40, dtype=np.uint8)
        Image.fromarray(pixels).save(deployment / "images" / f"im{index}.png")
    spec = ModelSpec("mlp", {"in_features": 48, "hidden": [4], "out_features": 2})
    (deployment / "models").mkdir(exist_ok=True)
    save_file(state_to_arrays(build_model(spec)), str(deployment / "models" / "m.safetensors"))
    hub, address = start_hub(deployment)
    try:
        (deployment / "pod-lines.toml").write_text(
            pod_toml(address)
            + '[datasets.images]\nkind = "folder"\npath = "images"\npattern = "*.png"\n'
            + "[datasets.images.loader_options]\nsize = [4, 4]\n"
        )
        pod, _ = daemon(["pod", "start", "--config", "pod-lines.toml"], deployment, "online")
        try:
            head = f'hub = "{address}"\nidentity = "keys/alice.key"\npods = ["pod-a"]\n'
            head += '[tls]\nca = "hub/tls/ca.crt"\n'
            analytics = (
                '[task]\nprotocol = "analytics"\n[task.config.request]\n'
                'statistics = ["count"]\ncolumns = ["x"]\n'
            )
            (deployment / "stats.toml").write_text(head + analytics)
            (deployment / "nope.toml").write_text('dataset = "nope"\n' + head + analytics)
            (deployment / "tasks").mkdir(exist_ok=True)
            (deployment / "tasks" / "infer.toml").write_text(  # the model: ../models/
                'dataset = "images"\n'
                + head.replace("keys/", "../keys/").replace("hub/tls", "../hub/tls")
                + '[task]\nprotocol = "inference"\n[task.config]\n'
                'model_file = "../models/m.safetensors"\nbatch_size = 2\n'
                '[task.config.model]\nname = "mlp"\n[task.config.model.config]\n'
                "in_features = 48\nhidden = [4]\nout_features = 2\n"
            )
            done = run_cli("run", "stats.toml", "--json", cwd=deployment)
            assert done.returncode == 0, done.stderr[-3000:]
            refused = run_cli("run", "nope.toml", "--json", cwd=deployment)
            assert refused.returncode == 5, refused.stderr[-3000:]
            inferred = run_cli("run", "tasks/infer.toml", "--json", cwd=deployment)
            assert inferred.returncode == 0, inferred.stderr[-3000:]
            assert '"files": {"pod-a": 3}' in inferred.stdout
        finally:
            pod_err = stop(pod)
    finally:
        stop(hub)
    tasks = [line for line in _lines(pod_err) if ": task " in line]
    assert len(tasks) == 3, pod_err
    task = r"INFO fedloom\.pod: pod-a: task [0-9a-f]{8} from alice: "
    assert re.fullmatch(task + r"analytics on dataset default: completed in \d+\.\d s", tasks[0])
    assert re.fullmatch(
        task + r"analytics on dataset nope: rejected \(NO_DATA: pod 'pod-a' has no dataset "
        r"'nope'; it has: \['default', 'images'\]\)",
        tasks[1],
    ), tasks[1]
    assert re.fullmatch(task + r"inference on dataset images: completed in \d+\.\d s", tasks[2])


def test_a_pod_that_does_not_trust_the_hub_says_why_in_its_own_lines_only(
    deployment: Path,
) -> None:
    init_hub_tls(deployment / "other" / "tls")
    hub, address = start_hub(deployment)
    try:
        (deployment / "pod-ca.toml").write_text(
            pod_toml(address).replace("hub/tls/ca.crt", "other/tls/ca.crt")
        )
        pod = _popen(["pod", "start", "--config", "pod-ca.toml"], deployment)
        assert pod.stderr is not None
        seen: list[str] = []
        while sum("CERTIFICATE_VERIFY_FAILED" in line for line in seen) < 2:  # two attempts
            line = pod.stderr.readline()
            assert line, f"the pod ended: {''.join(seen)}"
            seen.append(line)
        pod.send_signal(signal.SIGTERM)
        out, err = _finish(pod)
        err = "".join(seen) + err
    finally:
        stop(hub)
    assert pod.returncode == 0 and "online" not in out
    lines = _lines(err)
    # gRPC's C core writes its own lines (I1204 12:00:00.000 ... ssl_transport_security.cc)
    assert all(line.startswith(("INFO ", "WARNING ")) for line in lines), err
