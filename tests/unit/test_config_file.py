"""The one TOML reader every config file shares: file errors, syntax errors, typed getters."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedloom._config_file import MAX_CONFIG_FILE_BYTES, parse_toml, read_toml
from fedloom.errors import ConfigError
from fedloom.modeller._task_file import load_task_file
from fedloom.pod._config import load_pod_config
from fedloom.simulation._config import load_simulation_file


@pytest.mark.parametrize(
    ("load", "kind"),
    [
        (load_pod_config, "pod config file"),
        (load_task_file, "task file"),
        (load_simulation_file, "simulation file"),
    ],
)
def test_every_config_file_is_read_by_the_one_reader(
    tmp_path: Path, load: object, kind: str
) -> None:
    assert callable(load)
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as raised:
        load(missing)
    assert str(raised.value) == f"cannot read {kind} {missing}: it does not exist"
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * MAX_CONFIG_FILE_BYTES + "\n")
    with pytest.raises(ConfigError) as raised:
        load(big)
    assert str(raised.value) == f"{big}: larger than {MAX_CONFIG_FILE_BYTES} bytes; is it a {kind}?"
    broken = tmp_path / "broken.toml"
    broken.write_text('name = "a"\n[simulation\n')
    with pytest.raises(ConfigError) as raised:
        load(broken)
    assert str(raised.value).startswith(f"{broken}: not valid TOML: ")
    assert "line 2, column 12" in str(raised.value)


def test_a_file_that_is_not_utf8_or_names_a_nul_is_refused(tmp_path: Path) -> None:
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(ConfigError, match=r"latin\.toml: not UTF-8 text \(byte 11\)$"):
        read_toml(latin)
    with pytest.raises(ConfigError, match="holds a NUL character"):
        read_toml("a\x00b.toml")


def test_parsed_text_resolves_paths_against_its_file_folder(tmp_path: Path) -> None:
    top = parse_toml('store = "pod.db"\n[policy]\nmin_rows = 0\n', tmp_path / "pod.toml")
    assert top.path("store", 'store = "x.db"') == tmp_path / "pod.db"
    policy = top.table("policy")
    assert policy is not None
    with pytest.raises(ConfigError) as raised:
        policy.integer("min_rows", 5)
    assert (
        str(raised.value)
        == f"{tmp_path / 'pod.toml'}: policy.min_rows: must be an integer >= 1, got 0"
    )


def test_unknown_keys_and_wrong_tables_name_the_section(tmp_path: Path) -> None:
    top = parse_toml('name = "a"\npolicy = 3\n[worker]\nspeed = 1\n', tmp_path / "f.toml")
    with pytest.raises(ConfigError) as raised:
        top.table("policy")
    assert str(raised.value) == f"{tmp_path / 'f.toml'}: policy: must be a table ([policy]), got 3"
    worker = top.table("worker")
    assert worker is not None
    with pytest.raises(ConfigError) as raised:
        worker.check_keys({"heartbeat"})
    assert str(raised.value) == (
        f"{tmp_path / 'f.toml'}: worker.speed: unknown key; allowed here: heartbeat"
    )
