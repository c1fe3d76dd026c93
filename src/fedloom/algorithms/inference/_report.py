"""Report rows: one CSV row per input file, written at the pod or sent to the modeller.

:func:`report_rows` turns predictions (and failed files) into rows with
:data:`REPORT_COLUMNS`; :func:`write_report_csv` writes them atomically at the pod;
:func:`rows_to_body` and :func:`rows_from_body` carry them in a message and check what
arrives.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

from fedloom.algorithms.inference._predictions import Array, Predictions
from fedloom.errors import ConfigError, ProtocolError

__all__ = [
    "REPORT_COLUMNS",
    "report_rows",
    "rows_from_body",
    "rows_to_body",
    "write_report_csv",
]

REPORT_COLUMNS = ("file", "prediction", "probabilities", "status")
STATUS_OK = "ok"
STATUS_FAILED_PREFIX = "failed: "
PROBABILITY_DECIMALS = 6

_NO_FAILURES: Mapping[str, str] = MappingProxyType({})


def _probabilities_text(row: Array) -> str:
    values = [round(float(value), PROBABILITY_DECIMALS) for value in row]
    return json.dumps(values, separators=(",", ":"))


def report_rows(
    predictions: Predictions, failed: Mapping[str, str] = _NO_FAILURES
) -> list[dict[str, str]]:
    """One report row per file, ordered by file name (see :data:`REPORT_COLUMNS`).

    A predicted file gets its class index, its probabilities as a compact JSON list
    (rounded to 6 decimals) and status ``"ok"``; a failed file (name → reason) gets an
    empty prediction and probabilities and status ``"failed: <reason>"``.

    Raises:
        ConfigError: a failed file is also in ``predictions``, or a name or reason is not
            a string.
    """
    rows: dict[str, dict[str, str]] = {}
    for index, name in enumerate(predictions.names):
        rows[name] = {
            "file": name,
            "prediction": str(int(predictions.predicted[index])),
            "probabilities": _probabilities_text(predictions.probabilities[index]),
            "status": STATUS_OK,
        }
    for name, reason in failed.items():
        if not isinstance(name, str) or not isinstance(reason, str):
            raise ConfigError(f"failed files must map names to reasons, got {name!r}: {reason!r}")
        if name in rows:
            raise ConfigError(f"file {name!r} is both predicted and failed")
        rows[name] = {
            "file": name,
            "prediction": "",
            "probabilities": "",
            "status": STATUS_FAILED_PREFIX + reason,
        }
    return [rows[name] for name in sorted(rows)]


def _check_row(row: object, error: type[Exception]) -> dict[str, str]:
    if not isinstance(row, Mapping) or set(row) != set(REPORT_COLUMNS):
        raise error(f"a report row must be a mapping with keys {', '.join(REPORT_COLUMNS)}")
    if not all(isinstance(row[key], str) for key in REPORT_COLUMNS):
        raise error("report row values must be strings")
    return {key: row[key] for key in REPORT_COLUMNS}


def write_report_csv(
    rows: Iterable[Mapping[str, str]], path: Path, *, overwrite: bool = False
) -> Path:
    """Write ``rows`` as a UTF-8 CSV with header :data:`REPORT_COLUMNS`; return ``path``.

    The file is written next to ``path`` under a temporary name and then moved into place,
    so readers see either no report (or the old one) or the whole new one. An existing
    file is only replaced when ``overwrite`` is True.

    Raises:
        ConfigError: a row does not have exactly the report columns as strings, ``path``
            exists and ``overwrite`` is False, or the file cannot be written.
    """
    checked = [_check_row(row, ConfigError) for row in rows]
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(REPORT_COLUMNS)
    writer.writerows([row[key] for key in REPORT_COLUMNS] for row in checked)
    _write_atomically(path, buffer.getvalue().encode("utf-8"), overwrite=overwrite)
    return path


def _write_atomically(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write ``data`` to a temporary file next to ``path``, then move it into place."""
    if not overwrite and path.exists():
        raise ConfigError(f"{path} already exists; choose another path or pass overwrite=True")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc}") from exc
    temp = Path(name)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        if overwrite:
            os.replace(temp, path)
        else:
            # A hard link fails if the target appeared since the check: never clobbers.
            os.link(temp, path)
    except FileExistsError as exc:
        raise ConfigError(
            f"{path} already exists; choose another path or pass overwrite=True"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc}") from exc
    finally:
        temp.unlink(missing_ok=True)


def rows_to_body(rows: Iterable[Mapping[str, str]]) -> list[list[str]]:
    """Report rows as lists of strings in :data:`REPORT_COLUMNS` order (msgpack-able).

    Raises:
        ConfigError: a row does not have exactly the report columns as strings.
    """
    checked = [_check_row(row, ConfigError) for row in rows]
    return [[row[key] for key in REPORT_COLUMNS] for row in checked]


def _check_probabilities(text: str) -> None:
    try:
        values = json.loads(text)
    except ValueError as exc:
        raise ProtocolError(f"report probabilities {text[:80]!r} are not JSON") from exc
    if not isinstance(values, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    ):
        raise ProtocolError(f"report probabilities {text[:80]!r} are not a list of numbers")


def rows_from_body(body: object) -> list[dict[str, str]]:
    """Rebuild report rows from a received :func:`rows_to_body` body.

    Raises:
        ProtocolError: not a list of 4-string rows, an empty or repeated file name, a
            status other than ``ok`` / ``failed: ...``, an ``ok`` row without an integer
            prediction and a JSON list of numbers, or a failed row with either filled in.
    """
    if not isinstance(body, list | tuple):
        raise ProtocolError(f"a report body must be a list of rows, got {type(body).__name__}")
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    for index, item in enumerate(body):
        if (
            not isinstance(item, list | tuple)
            or len(item) != len(REPORT_COLUMNS)
            or not all(isinstance(value, str) for value in item)
        ):
            raise ProtocolError(f"report row {index} must be {len(REPORT_COLUMNS)} strings")
        row = dict(zip(REPORT_COLUMNS, item, strict=True))
        name, status = row["file"], row["status"]
        if not name or name in seen:
            raise ProtocolError(f"report row {index} has an empty or repeated file name")
        seen.add(name)
        if status == STATUS_OK:
            if not re.fullmatch(r"-?[0-9]+", row["prediction"]):
                raise ProtocolError(f"report row {index} has prediction {row['prediction']!r}")
            _check_probabilities(row["probabilities"])
        elif status.startswith(STATUS_FAILED_PREFIX):
            if row["prediction"] or row["probabilities"]:
                raise ProtocolError(f"failed report row {index} must not carry a prediction")
        else:
            raise ProtocolError(f"report row {index} has unknown status {status[:80]!r}")
        rows.append(row)
    return rows
