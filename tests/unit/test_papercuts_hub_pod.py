"""Paper cuts of the pod's start: plugins that cannot be imported, datasets checked up
front (every bad one named), and the kinds an unknown kind lists."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedloom._registry import import_plugins
from fedloom.datasources import (
    DATASOURCE_KINDS,
    FileSource,
    TableSource,
    check_usable,
    datasource_from_config,
)
from fedloom.errors import (
    ConfigError,
    DataError,
    DatasetNotFoundError,
    EmptyDatasetError,
    MissingColumnError,
)
from fedloom.pod import ArraySource, load_pod_config

# --- plugins ------------------------------------------------------------------------------


def test_a_plugin_that_does_not_exist_is_a_config_error_naming_it_and_where() -> None:
    with pytest.raises(ConfigError) as caught:
        import_plugins(("no_such_fedloom_plugin",), where="pod.toml: plugins")
    assert str(caught.value) == (
        "pod.toml: plugins: cannot import plugin module 'no_such_fedloom_plugin': "
        "no such module (is it installed, or on PYTHONPATH?)"
    )
    assert isinstance(caught.value.__cause__, ModuleNotFoundError)


def test_a_plugin_whose_import_fails_names_the_plugin_and_the_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "needs_missing_plugin.py").write_text("import no_such_dependency_xyz\n")
    (tmp_path / "raising_plugin.py").write_text("raise RuntimeError('bad\\nplugin')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match=r"^plugins: cannot import plugin module "):
        import_plugins(("needs_missing_plugin",))
    with pytest.raises(ConfigError) as caught:
        import_plugins(("needs_missing_plugin",))
    assert "No module named 'no_such_dependency_xyz'" in str(caught.value)
    with pytest.raises(ConfigError) as raised:
        import_plugins(("raising_plugin",))
    assert str(raised.value) == (
        "plugins: plugin module 'raising_plugin' failed to import: RuntimeError: bad plugin"
    )


# --- datasources: check() -----------------------------------------------------------------


def _csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_table_check_reads_only_the_head_of_a_csv(tmp_path: Path) -> None:
    # the second data line is broken: check() does not read it, a full load does
    path = _csv(tmp_path / "a.csv", 'x,label\n1,0\n"unterminated\n')
    source = TableSource(path, label_column="label")
    source.check()
    with pytest.raises(DataError):
        len(source)


@pytest.mark.parametrize(
    ("text", "options", "error", "words"),
    [
        (None, {"label_column": "label"}, DatasetNotFoundError, "no such data file"),
        ("", {"label_column": "label"}, EmptyDatasetError, "is empty"),
        ("x,label\n", {"label_column": "label"}, EmptyDatasetError, "has no rows"),
        ("x,y\n1,2\n", {"label_column": "label"}, MissingColumnError, "label column 'label'"),
        ("x,y\n1,2\n", {"feature_columns": ["x", "z"]}, MissingColumnError, "feature column 'z'"),
    ],
)
def test_a_table_check_raises_what_a_first_use_would(
    tmp_path: Path, text: str | None, options: dict[str, object], error: type, words: str
) -> None:
    path = tmp_path / "a.csv"
    if text is not None:
        path.write_text(text)
    source = TableSource(path, **options)  # type: ignore[arg-type]
    with pytest.raises(error, match=words):
        source.check()


def test_a_table_check_reads_a_parquet_footer(tmp_path: Path) -> None:
    frame = pd.DataFrame({"x": np.arange(3.0), "label": [0, 1, 0]})
    frame.to_parquet(tmp_path / "a.parquet")
    frame.iloc[:0].to_parquet(tmp_path / "empty.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    TableSource(tmp_path / "a.parquet", label_column="label").check()
    with pytest.raises(MissingColumnError, match="'y'"):
        TableSource(tmp_path / "a.parquet", label_column="y").check()
    with pytest.raises(EmptyDatasetError):
        TableSource(tmp_path / "empty.parquet").check()
    with pytest.raises(DataError, match=r"could not read the parquet file 'bad\.parquet'"):
        TableSource(tmp_path / "bad.parquet").check()


def test_a_csv_that_cannot_be_read_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "folder.csv").mkdir()
    with pytest.raises(DataError, match=r"could not read the csv file 'folder\.csv'"):
        TableSource(tmp_path / "folder.csv").check()


def test_frame_array_and_folder_sources_check(tmp_path: Path) -> None:
    TableSource(pd.DataFrame({"x": [1.0], "label": [0]}), label_column="label").check()
    with pytest.raises(MissingColumnError):
        TableSource(pd.DataFrame({"x": [1.0]}), label_column="label").check()
    check_usable(ArraySource(np.zeros((2, 2), np.float32)))
    (tmp_path / "images").mkdir()
    FileSource(tmp_path / "images").check()
    with pytest.raises(DatasetNotFoundError, match="does not exist"):
        FileSource(tmp_path / "missing").check()
    _csv(tmp_path / "file", "")
    with pytest.raises(DatasetNotFoundError, match="is not a folder"):
        FileSource(tmp_path / "file").check()


def test_an_unknown_kind_lists_every_kind_folder_included() -> None:
    assert set(DATASOURCE_KINDS) == {"csv", "parquet", "table", "folder"}
    with pytest.raises(ConfigError) as caught:
        datasource_from_config({"kind": "images", "path": "x", "pattern": "*.png"})
    assert str(caught.value) == (
        "unknown datasource kind 'images'; known kinds: csv, parquet, table, folder"
    )


# --- the pod's config: every dataset is checked ------------------------------------------

POD = """\
name = "pod-a"
hub = "localhost:7800"
identity = "keys/pod-a.key"
store = "pod-a.db"
insecure = true
[policy]
modellers = ["alice"]
"""


def _pod(folder: Path, datasets: str) -> Path:
    (folder / "keys").mkdir(exist_ok=True)
    (folder / "keys" / "pod-a.key").write_text("{}")  # only its existence is checked
    path = folder / "pod.toml"
    path.write_text(POD + datasets)
    return path


def test_check_datasets_names_every_bad_dataset_one_per_line(tmp_path: Path) -> None:
    _csv(tmp_path / "good.csv", "x,label\n1,0\n")
    _csv(tmp_path / "nolabel.csv", "x,y\n1,0\n")
    path = _pod(
        tmp_path,
        '[datasets.good]\nkind = "csv"\npath = "good.csv"\nlabel_column = "label"\n'
        '[datasets.missing]\nkind = "csv"\npath = "missing.csv"\n'
        '[datasets.nolabel]\nkind = "csv"\npath = "nolabel.csv"\nlabel_column = "label"\n'
        '[datasets.scans]\nkind = "folder"\npath = "scans"\n',
    )
    config = load_pod_config(path)  # reading the file opens no dataset
    with pytest.raises(DataError) as caught:
        config.check_datasets()
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{path}: 3 of the 4 datasets cannot be used:"
    assert lines[1:] == [
        f"  datasets.missing: no such data file: '{tmp_path / 'missing.csv'}'",
        "  datasets.nolabel: label column 'label' is not in the dataset; columns present: 'x', 'y'",
        f"  datasets.scans: the data folder '{tmp_path / 'scans'}' does not exist",
    ]
    (tmp_path / "scans").mkdir()
    _csv(tmp_path / "missing.csv", "x\n1\n")
    _csv(tmp_path / "nolabel.csv", "x,label\n1,0\n")
    assert sorted(config.check_datasets()) == ["good", "missing", "nolabel", "scans"]


def test_check_datasets_with_one_bad_dataset_is_one_line(tmp_path: Path) -> None:
    path = _pod(tmp_path, '[datasets.default]\nkind = "csv"\npath = "a.csv"\n')
    with pytest.raises(DataError) as caught:
        load_pod_config(path).check_datasets()
    assert str(caught.value) == (
        f"{path}: datasets.default: no such data file: '{tmp_path / 'a.csv'}'"
    )


# --- the pod's one line per task ----------------------------------------------------------


def test_a_pod_logs_one_line_per_task_accepted_or_rejected(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from fedloom import AnalyticsRequest, run_local
    from fedloom.errors import PodResponseError
    from fedloom.pod import PodPolicy
    from fedloom.protocols import Analytics

    rng = np.random.default_rng(0)
    pods = {"pod-a": ArraySource(rng.normal(size=(20, 2)), rng.integers(0, 2, 20))}
    analytics = Analytics(request=AnalyticsRequest(statistics=("count",), columns=("f0",)))
    caplog.set_level(logging.INFO, logger="fedloom.pod")
    run_local(analytics, pods, modeller_name="alice")
    with pytest.raises(PodResponseError):
        run_local(
            analytics,
            pods,
            modeller_name="bob",
            policy=PodPolicy(allowed_modellers=frozenset({"alice"})),
        )
    lines = [r.getMessage() for r in caplog.records if r.name == "fedloom.pod._pod"]
    assert len(lines) == 2, lines
    assert re.fullmatch(
        r"pod-a: task [0-9a-f]{8} from alice: analytics on dataset default: "
        r"completed in \d+\.\d s",
        lines[0],
    ), lines
    assert re.fullmatch(
        r"pod-a: task [0-9a-f]{8} from bob: analytics on dataset default: "
        r"rejected \(NO_ACCESS: modeller 'bob' is not allowed on this pod\)",
        lines[1],
    ), lines


def test_what_a_modeller_sent_is_logged_as_bounded_printable_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from fedloom.plugins import Message, MessageType
    from fedloom.pod import Pod

    pod = Pod("pod-a", {"default": ArraySource(np.zeros((2, 2)))})
    request = Message(
        MessageType.JOB_REQUEST, "alice", "pod-a", "t" * 40, body={"dataset": "a\nb" + "x" * 99}
    )
    caplog.set_level(logging.INFO, logger="fedloom.pod")
    pod._log_task(request, "fedavg", "completed in 1.0 s")
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == (
        f"pod-a: task tttttttt from alice: fedavg on dataset a?b{'x' * 58}...: completed in 1.0 s"
    )


# --- inference's model_file: a path, as in a task file ------------------------------------

INFER = """\
hub = "127.0.0.1:7800"
identity = "keys/alice.key"
pods = ["pod-a"]
insecure = true
dataset = "images"
[task]
protocol = "inference"
[task.config]
model_file = "{model_file}"
[task.config.model]
name = "mlp"
[task.config.model.config]
in_features = 4
hidden = [3]
out_features = 2
"""
TINY = {"name": "mlp", "config": {"in_features": 4, "hidden": [3], "out_features": 2}}


def _infer_task(folder: Path, model_file: str) -> Path:
    (folder / "keys").mkdir(exist_ok=True)
    (folder / "keys" / "alice.key").write_text("{}")  # only its existence is checked
    path = folder / "infer.toml"
    path.write_text(INFER.format(model_file=model_file))
    return path


def _model_file_bytes(**config: object) -> bytes:
    """A safetensors file of the INFER task's mlp (or of one with another ``config``)."""
    import safetensors.numpy

    from fedloom.algorithms.ml import ModelSpec, build_model, state_to_arrays

    layout = {"in_features": 4, "hidden": [3], "out_features": 2} | config
    return safetensors.numpy.save(state_to_arrays(build_model(ModelSpec("mlp", layout))))


def test_a_model_file_that_does_not_fit_the_model_is_refused_by_the_modeller(
    tmp_path: Path,
) -> None:
    from fedloom.modeller._task_file import load_task_file

    (tmp_path / "other.safetensors").write_bytes(_model_file_bytes(hidden=[5]))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match="model_file does not fit model 'mlp'"):
        load_task_file(_infer_task(tmp_path, "other.safetensors"))
    with pytest.raises(ConfigError, match="model_file is not a valid safetensors file"):
        load_task_file(_infer_task(tmp_path, "junk.safetensors"))


def test_a_task_file_model_file_is_a_path_relative_to_the_task_file(tmp_path: Path) -> None:
    from fedloom.modeller._task_file import load_task_file
    from fedloom.protocols._inference import MODEL_FILE

    (tmp_path / "models").mkdir()
    weights = _model_file_bytes()
    (tmp_path / "models" / "m.safetensors").write_bytes(weights)
    task = load_task_file(_infer_task(tmp_path, "models/m.safetensors"))
    assert task.protocol.model_file == weights  # type: ignore[attr-defined]
    sent = task.protocol.setup_values().tensors[MODEL_FILE]  # type: ignore[attr-defined]
    assert sent.tobytes() == weights
    assert "model_file" not in task.protocol.dump()["config"]  # never sent as config


def test_a_missing_model_file_is_one_config_error_naming_the_path(tmp_path: Path) -> None:
    from fedloom.modeller._task_file import load_task_file

    path = _infer_task(tmp_path, "missing.safetensors")
    with pytest.raises(ConfigError) as caught:
        load_task_file(path)
    assert str(caught.value) == (
        f"{path}: task.config: inference.model_file: cannot read "
        f"'{tmp_path / 'missing.safetensors'}': No such file or directory"
    )
    (tmp_path / "folder.safetensors").mkdir()
    with pytest.raises(ConfigError, match="Is a directory"):
        load_task_file(_infer_task(tmp_path, "folder.safetensors"))


def test_model_file_takes_bytes_or_a_path_in_python(tmp_path: Path) -> None:
    from fedloom.algorithms.ml import ModelSpec
    from fedloom.protocols import BatchedInference

    model = ModelSpec.from_config(TINY)
    (tmp_path / "m.safetensors").write_bytes(b"weights")
    assert BatchedInference(model, model_file=b"weights").model_file == b"weights"
    assert BatchedInference(model, model_file=tmp_path / "m.safetensors").model_file == b"weights"
    assert BatchedInference(model, model_file=str(tmp_path / "m.safetensors")).model_file == (
        b"weights"
    )
    with pytest.raises(ConfigError, match="model_file must be"):
        BatchedInference(model, model_file=3)  # type: ignore[arg-type]


def test_a_pod_never_rebuilds_a_model_file_from_a_config(tmp_path: Path) -> None:
    from fedloom.protocols import load_protocol

    (tmp_path / "secret").write_bytes(b"the pod's file")
    spec = {"protocol": "inference", "config": {"model": TINY, "model_file": str(tmp_path)}}
    with pytest.raises(ConfigError, match="unknown key"):
        load_protocol(spec)
