"""fedloom's error line shows the error's text as it is: it may quote a pod or a path."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fedloom.cli._app import main
from fedloom.errors import ExitCode


def test_an_error_with_markup_characters_is_printed_as_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "task[/x][bold].toml"
    monkeypatch.setattr(sys, "argv", ["fedloom", "run", str(missing)])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == int(ExitCode.CONFIG)
    printed = capsys.readouterr()
    assert "[/x][bold]" in (printed.out + printed.err).replace("\n", "")
