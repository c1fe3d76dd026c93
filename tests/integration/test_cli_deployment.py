"""The deployment a user does by hand, with the real commands, each in its own process.

fedloom keys new → fedloom hub init → fedloom hub register → fedloom hub start →
fedloom pod start --config pod.toml → fedloom run TASK.toml.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .cli_kit import daemon, pod_toml, register, start_hub, stop
from .test_demo_cli import run_cli


def test_keys_hub_pod_and_run_from_the_command_line(tmp_path: Path) -> None:
    for name in ("alice", "pod-a"):
        done = run_cli("keys", "new", name, "--dir", "keys", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    assert (tmp_path / "keys" / "alice.key").stat().st_mode & 0o777 == 0o600
    again = run_cli("keys", "new", "alice", "--dir", "keys", cwd=tmp_path)
    assert again.returncode == 3 and "already exists" in again.stderr  # never overwritten

    assert run_cli("hub", "init", "--data-dir", "hub", cwd=tmp_path).returncode == 0
    register(tmp_path, "alice", "modeller")
    register(tmp_path, "pod-a", "pod")
    bad_role = run_cli(
        "hub",
        "register",
        "keys/alice.pub.json",
        "--role",
        "admin",
        "--data-dir",
        "hub",
        cwd=tmp_path,
    )
    assert bad_role.returncode == 3 and "Traceback" not in bad_role.stderr

    data = pd.DataFrame({"x": np.arange(50, dtype=float), "label": np.arange(50) % 2})
    data.to_csv(tmp_path / "a.csv", index=False)
    from PIL import Image

    (tmp_path / "images").mkdir()
    for index in range(3):
        pixels = np.full((4, 4, 3), index * 40, dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / "images" / f"im{index}.png")
    (tmp_path / "images" / "broken.png").write_bytes(b"not a png")
    hub, address = start_hub(tmp_path)
    try:
        (tmp_path / "pod.toml").write_text(
            pod_toml(address, rest='[modeller_keys]\nalice = "keys/alice.pub.json"\n')
            + '[datasets.images]\nkind = "folder"\npath = "images"\npattern = "*.png"\n'
            "[datasets.images.loader_options]\nsize = [4, 4]\n"
        )
        pod, _ = daemon(["pod", "start", "--config", "pod.toml"], tmp_path, "pod-a online")
        try:
            (tmp_path / "task.toml").write_text(
                f'hub = "{address}"\nidentity = "keys/alice.key"\npods = ["pod-a"]\n'
                '[tls]\nca = "hub/tls/ca.crt"\n[pod_keys]\n"pod-a" = "keys/pod-a.pub.json"\n'
                "[policy]\ntimeout = 30\nrequire_all = true\n"
                '[task]\nprotocol = "analytics"\n[task.config.request]\n'
                'statistics = ["count", "mean"]\ncolumns = ["x"]\n'
            )
            done = run_cli("run", "task.toml", "--json", cwd=tmp_path)
            assert done.returncode == 0, done.stderr[-3000:]
            summary = json.loads(done.stdout)
            assert summary["accepted"] == ["pod-a"]
            assert summary["result"]["statistics"]["x"]["count"] == 50
            assert summary["result"]["statistics"]["x"]["mean"] == 24.5

            # batched inference over the pod's images; the reports land in a folder
            (tmp_path / "infer.toml").write_text(
                f'hub = "{address}"\nidentity = "keys/alice.key"\npods = ["pod-a"]\n'
                'dataset = "images"\n[tls]\nca = "hub/tls/ca.crt"\n'
                '[task]\nprotocol = "inference"\n[task.config]\nbatch_size = 2\n'
                '[task.config.model]\nname = "mlp"\n'
                "[task.config.model.config]\nin_features = 48\nhidden = [4]\nout_features = 2\n"
            )
            done = run_cli("run", "infer.toml", "--json", "--report-dir", "reports", cwd=tmp_path)
            assert done.returncode == 0, done.stderr[-3000:]
            assert json.loads(done.stdout)["result"] == {
                "files": {"pod-a": 3},
                "failed": {"pod-a": 1},
            }
            report = (tmp_path / "reports" / "pod-a.csv").read_text().splitlines()
            assert report[0] == "file,prediction,probabilities,status"
            assert sum(",ok" in line for line in report) == 3
            assert any("broken.png" in line and "failed" in line for line in report)
        finally:
            stop(pod)
    finally:
        stop(hub)


def test_the_readme_config_files_load(tmp_path: Path) -> None:
    from fedloom import load_task_file
    from fedloom.hub import Identity
    from fedloom.pod import load_pod_config, save_identity

    from .test_demo_cli import README

    blocks = README.read_text(encoding="utf-8").split("```toml\n")[1:]
    texts = {block.split("\n", 1)[0].strip("# ").strip(): block.split("```")[0] for block in blocks}
    assert set(texts) >= {"pod.toml (relative paths are relative to this file)", "task.toml"}
    for name in ("alice", "pod-a"):
        save_identity(Identity.generate(name), tmp_path / "keys")
    for name, text in texts.items():
        (tmp_path / name.split(" ")[0]).write_text(text)
    pod = load_pod_config(tmp_path / "pod.toml")
    assert pod.policy.allowed_modellers == frozenset({"alice"})
    assert pod.max_concurrent_tasks == 2
    assert pod.policy.allowed_algorithms == frozenset({"mlp", "dataset_summary"})
    assert pod.policy.usage_limits == {"mlp": 100000}
    task = load_task_file(tmp_path / "task.toml")
    assert task.pods == ("pod-a",) and task.protocol.name == "analytics"
    fedavg = load_task_file(tmp_path / "fedavg.toml")
    assert fedavg.protocol.name == "fedavg" and fedavg.keep_checkpoints.keep == "last"
    # the inference task runs the model file it names: one that fits its cnn
    from safetensors.numpy import save_file

    from fedloom.algorithms.ml import ModelSpec, build_model, state_to_arrays

    cnn = {"in_channels": 3, "image_size": 16, "channels": [8], "hidden": 16, "out_features": 2}
    save_file(state_to_arrays(build_model(ModelSpec("cnn", cnn))), tmp_path / "model.safetensors")
    inference = load_task_file(tmp_path / "inference.toml")
    assert inference.protocol.name == "inference" and inference.dataset == "inbox"
