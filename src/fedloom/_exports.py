"""How a public module's ``__all__`` is derived from what it imports, written once.

A tier module (``fedloom.errors``, ``fedloom.pod``, ``fedloom.hub``, ``fedloom.plugins``,
``fedloom.testing``) imports each public name as ``from ... import Name as Name`` (the
explicit re-export type checkers honour) and ends with
``__all__ = _public_names(globals())``, having imported this function under that private
name. The researcher's tier, ``fedloom`` itself, lists its names once in ``__init__.pyi``.
"""

from __future__ import annotations
import __future__

from collections.abc import Mapping
from types import ModuleType

__all__ = ["public_names"]


def public_names(namespace: Mapping[str, object]) -> list[str]:
    """The sorted names of ``namespace`` that are public.

    Public: not ``_private``, not modules and not ``from __future__`` features.
    """
    return sorted(
        name
        for name, value in namespace.items()
        if not name.startswith("_") and not isinstance(value, ModuleType | __future__._Feature)
    )
