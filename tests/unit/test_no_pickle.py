"""Nothing that handles network bytes may unpickle: a static check over the source.

Walks every module under ``fedloom.wire``, ``fedloom.transport`` and ``fedloom.pod`` and,
transitively, every fedloom module they import (parent packages included, since importing
``fedloom.a.b`` runs ``fedloom/__init__.py`` and ``fedloom/a/__init__.py``), and flags any
import of a pickle-family module or call of a loader that unpickles.
"""

from __future__ import annotations

import ast
from pathlib import Path
from textwrap import dedent

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
ROOTS = ("fedloom.wire", "fedloom.transport", "fedloom.pod")

FORBIDDEN_MODULES = frozenset(
    {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "shelve", "marshal", "copyreg",
     "joblib", "pickletools", "jsonpickle"}
)  # fmt: skip
FORBIDDEN_CALLS = frozenset(
    {"torch.load", "torch.serialization.load", "torch.jit.load", "torch.package.PackageImporter",
     "pandas.read_pickle", "numpy.lib.format.read_array_header_pickle"}
)  # fmt: skip
FORBIDDEN_ATTRIBUTES = frozenset({"__reduce__", "__reduce_ex__", "read_pickle", "to_pickle"})
NUMPY_LOADERS = frozenset({"numpy.load", "numpy.lib.npyio.load", "numpy.lib.format.read_array"})
DYNAMIC_IMPORTERS = frozenset({"__import__", "importlib.import_module"})


def _root(module: str) -> str:
    return module.split(".", maxsplit=1)[0]


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted name it is bound to by an import anywhere in the file."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    names[alias.asname] = alias.name
                else:
                    names[_root(alias.name)] = _root(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.expr, aliases: dict[str, str]) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _is_false(node: ast.expr) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def _allows_pickle(call: ast.Call, dotted: str | None) -> bool:
    """``allow_pickle`` set to anything but a literal False, or possibly set via ``**``."""
    for keyword in call.keywords:
        if keyword.arg == "allow_pickle" and not _is_false(keyword.value):
            return True
        if keyword.arg is None and dotted in NUMPY_LOADERS:
            return True  # **kwargs could carry allow_pickle=True
    return dotted == "numpy.load" and len(call.args) >= 3 and not _is_false(call.args[2])


def find_pickle_uses(source: str, filename: str = "<source>") -> list[str]:
    """Every line of ``source`` that imports or calls something that unpickles."""
    tree = ast.parse(source, filename)
    aliases = _aliases(tree)
    found: list[str] = []

    def flag(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _root(alias.name) in FORBIDDEN_MODULES:
                    flag(node, f"import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if _root(node.module) in FORBIDDEN_MODULES:
                flag(node, f"from {node.module} import ...")
            for alias in node.names:
                if f"{node.module}.{alias.name}" in FORBIDDEN_CALLS:
                    flag(node, f"from {node.module} import {alias.name}")
        elif isinstance(node, ast.Call):
            dotted = _dotted(node.func, aliases)
            if dotted is not None and (
                dotted in FORBIDDEN_CALLS or _root(dotted) in FORBIDDEN_MODULES
            ):
                flag(node, f"call to {dotted}")
            if _allows_pickle(node, dotted):
                flag(node, f"{dotted or 'call'} with allow_pickle")
            target = node.args[0] if node.args else None
            if (
                dotted in DYNAMIC_IMPORTERS
                and isinstance(target, ast.Constant)
                and isinstance(target.value, str)
                and _root(target.value) in FORBIDDEN_MODULES
            ):
                flag(node, f"dynamic import of {target.value}")
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRIBUTES:
            flag(node, f"use of .{node.attr}")
        elif (
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.name in FORBIDDEN_ATTRIBUTES
        ):
            flag(node, f"definition of {node.name}")
    return found


# --- following fedloom imports ----------------------------------------------------------


def module_file(module: str, src: Path) -> Path | None:
    """The file that defines ``module`` under ``src``, if it is a module at all."""
    base = src.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def _with_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def imported_modules(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Dotted names of the fedloom modules and packages a module's source may import."""
    package = module if is_package else module.rpartition(".")[0]
    wanted: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            wanted.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            wanted.add(base)
            wanted.update(f"{base}.{alias.name}" for alias in node.names)  # maybe submodules
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name | ast.Attribute):
            name = node.func.id if isinstance(node.func, ast.Name) else node.func.attr
            if name in {"import_module", "__import__"} and node.args:
                target = node.args[0]
                if isinstance(target, ast.Constant) and isinstance(target.value, str):
                    wanted.add(target.value)
    return {parent for name in wanted if _root(name) == "fedloom" for parent in _with_parents(name)}


def scan(roots: tuple[str, ...], src: Path) -> tuple[set[Path], list[str]]:
    """The files reached from ``roots`` (all their modules, then their imports) and findings."""
    pending: list[str] = []
    for root in roots:
        path = module_file(root, src)
        assert path is not None, f"{root} is not under {src}"
        pending += _with_parents(root)  # importing a package runs its parents first
        if path.name == "__init__.py":
            for file in sorted(path.parent.rglob("*.py")):
                relative = file.relative_to(src).with_suffix("")
                parts = relative.parts[:-1] if file.name == "__init__.py" else relative.parts
                pending.append(".".join(parts))
    seen: set[Path] = set()
    findings: list[str] = []
    while pending:
        module = pending.pop()
        path = module_file(module, src)
        if path is None or path in seen:
            continue
        seen.add(path)
        source = path.read_text(encoding="utf-8")
        findings += find_pickle_uses(source, str(path.relative_to(src)))
        tree = ast.parse(source, str(path))
        pending += imported_modules(tree, module, path.name == "__init__.py")
    return seen, findings


# --- tests ------------------------------------------------------------------------------


def test_network_facing_code_never_unpickles() -> None:
    files, findings = scan(ROOTS, SRC)
    assert not findings, "\n".join(findings)
    reached = {path.relative_to(SRC).as_posix() for path in files}
    # the walk really covered the roots and followed their imports
    assert {"fedloom/wire/_codec.py", "fedloom/wire/_message.py", "fedloom/errors.py"} <= reached
    assert "fedloom/__init__.py" in reached
    assert any(name.startswith("fedloom/transport/") for name in reached)
    assert any(name.startswith("fedloom/pod/") for name in reached)


@pytest.mark.parametrize(
    "source",
    [
        "import pickle",
        "import pickle as safe_json",
        "from pickle import loads",
        "import _pickle",
        "import cPickle",
        "import cloudpickle",
        "import dill",
        "import shelve\nshelve.open('db')",
        "import marshal\nmarshal.loads(data)",
        "from marshal import loads",
        "import joblib",
        "def f(data):\n    import pickle\n    return pickle.loads(data)",
        "import torch\ntorch.load(x)",
        "import torch as T\nT.load(x, weights_only=True)",
        "from torch import load\nload(x)",
        "from torch import load as fetch\nfetch(x)",
        "import torch.serialization\ntorch.serialization.load(x)",
        "import torch\ntorch.jit.load(x)",
        "import numpy as np\nnp.load(f, allow_pickle=True)",
        "import numpy\nnumpy.load(f, allow_pickle=flag)",
        "from numpy import load\nload(f, None, True)",
        "import numpy as np\nnp.load(f, **options)",
        "import numpy as np\nnp.lib.format.read_array(f, allow_pickle=True)",
        "import pandas as pd\npd.read_pickle(path)",
        "frame.to_pickle(path)",
        "class Sneaky:\n    def __reduce__(self):\n        return (print, ('hi',))",
        "value.__reduce_ex__(2)",
        "__import__('pickle').loads(data)",
        "import importlib\nimportlib.import_module('dill')",
    ],
)
def test_checker_flags(source: str) -> None:
    assert find_pickle_uses(source)


@pytest.mark.parametrize(
    "source",
    [
        "import numpy as np\nnp.load(f)",
        "import numpy as np\nnp.load(f, allow_pickle=False)",
        "import numpy as np\nnp.load(f, 'r', False)",
        "import json\njson.loads(text)",
        "import msgpack\nmsgpack.unpackb(data, raw=False)",
        "import safetensors.numpy\nsafetensors.numpy.load(data)",
        "from safetensors.torch import load\nload(data)",
        "import torch\ntorch.save(state, buffer)",
        "config.load()",
        "import importlib\nimportlib.import_module('fedloom.wire')",
    ],
)
def test_checker_passes_clean_code(source: str) -> None:
    assert find_pickle_uses(source) == []


def make_package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dedent(text), encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(
    "importer",
    [
        "from fedloom.helper import tool",
        "import fedloom.helper",
        "from ..helper import tool",
        "from .. import helper",
        "import importlib\nimportlib.import_module('fedloom.helper')",
    ],
)
def test_scan_follows_imports_transitively(tmp_path: Path, importer: str) -> None:
    src = make_package(
        tmp_path,
        {
            "fedloom/__init__.py": "",
            "fedloom/wire/__init__.py": "from .codec import encode\n",
            "fedloom/wire/_codec.py": f"{importer}\n",
            "fedloom/helper.py": "from fedloom import deeper\n",
            "fedloom/deeper.py": "import pickle\n",
            "fedloom/unrelated.py": "import dill\n",
        },
    )
    files, findings = scan(("fedloom.wire",), src)
    assert findings == ["fedloom/deeper.py:1: import pickle"]
    assert src / "fedloom/unrelated.py" not in files


def test_scan_includes_parent_packages(tmp_path: Path) -> None:
    src = make_package(
        tmp_path,
        {
            "fedloom/__init__.py": "import cloudpickle\n",
            "fedloom/wire/__init__.py": "",
        },
    )
    _, findings = scan(("fedloom.wire",), src)
    assert findings == ["fedloom/__init__.py:1: import cloudpickle"]
