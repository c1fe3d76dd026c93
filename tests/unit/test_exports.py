"""The public API is exactly ``fedloom.__all__``: sorted, resolvable, documented."""

from __future__ import annotations

import fedloom


def test_all_is_sorted_and_unique() -> None:
    names = list(fedloom.__all__)
    assert names == sorted(names), "keep fedloom.__all__ sorted"
    assert len(names) == len(set(names))


def test_every_exported_name_resolves() -> None:
    missing = [name for name in fedloom.__all__ if not hasattr(fedloom, name)]
    assert not missing


def test_no_public_name_is_left_unexported() -> None:
    public = {
        name
        for name, value in vars(fedloom).items()
        if not name.startswith("_")
        and not getattr(value, "__name__", "").startswith("fedloom.")
        and not isinstance(value, type(fedloom))
    }
    assert public - set(fedloom.__all__) == set()


def test_exported_classes_and_functions_are_documented() -> None:
    undocumented = [
        name
        for name in fedloom.__all__
        if callable(getattr(fedloom, name)) and not (getattr(fedloom, name).__doc__ or "").strip()
    ]
    assert not undocumented
