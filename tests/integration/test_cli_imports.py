"""Commands that need no model code do not import torch (it costs seconds per command)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

_RUN = """
import json, sys
from fedloom.cli._app import main
sys.argv = ["fedloom", *sys.argv[1:]]
try:
    main()
except SystemExit as exit:
    code = exit.code
else:
    code = 0
print(json.dumps({"code": code, "torch": "torch" in sys.modules}), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "command",
    [
        ["keys", "new", "alice", "--dir", "keys"],
        ["hub", "init", "--data-dir", "hub"],
    ],
)
def test_key_and_hub_commands_leave_torch_alone(command: list[str], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _RUN, *command],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    facts = json.loads(done.stderr.strip().splitlines()[-1])
    assert facts == {"code": 0, "torch": False}, done.stderr[-2000:]
