"""The command line's log lines name public packages, never private modules."""

from __future__ import annotations

import logging

from fedloom.cli._app import _PublicNames


def test_a_log_line_names_the_public_package_and_leaves_the_record_alone() -> None:
    record = logging.LogRecord("fedloom.pod._pod", logging.INFO, __file__, 1, "hi", None, None)
    line = _PublicNames("%(levelname)s %(name)s: %(message)s").format(record)
    assert line == "INFO fedloom.pod: hi"
    assert record.name == "fedloom.pod._pod", "other handlers see the real logger name"
