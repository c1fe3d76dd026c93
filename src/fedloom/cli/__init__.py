"""The ``fedloom`` command line (typer): thin wrappers that parse and call the library."""

from fedloom.cli._app import app, main

__all__ = ["app", "main"]
