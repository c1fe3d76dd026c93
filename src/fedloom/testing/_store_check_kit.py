"""What the store conformance checks share: running one check, expecting, and sample data.

:func:`run_check` runs a check on a store in a fresh temporary folder; :func:`expect` and
:func:`raises` state its rules; the sample tasks, metrics and arrays are what the checks
store and read back.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np


class _Closable(Protocol):
    def close(self) -> None: ...


S = TypeVar("S", bound=_Closable)
_UNKNOWN_ID = "0" * 32


def run_check(check: Callable[[S], None], factory: Callable[[Path], S]) -> None:
    """Run one check on a store made in a fresh temporary folder, then close the store."""
    name = check.__name__.lstrip("_")
    with tempfile.TemporaryDirectory(prefix="fedloom-store-") as folder:
        store = factory(Path(folder))
        try:
            check(store)
        except AssertionError as exc:
            raise AssertionError(f"store conformance check {name!r} failed: {exc}") from exc
        except Exception as exc:
            raise AssertionError(
                f"store conformance check {name!r} raised {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            store.close()


def expect_concurrent_calls_succeed(work: Callable[[int], None], workers: int = 6) -> None:
    """Run ``work(0)`` .. ``work(workers - 1)`` in threads at once; fail naming what they raised.

    The store's own lock is what is under test: every call must succeed and none may be
    lost, whatever the interleaving.
    """
    errors: list[BaseException] = []

    def guarded(worker: int) -> None:
        try:
            work(worker)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(worker,)) for worker in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expect(not errors, f"concurrent calls failed: {errors[:3]}")


def expect(condition: bool, message: str) -> None:
    """AssertionError(message) unless ``condition`` (kept under ``python -O``, unlike assert)."""
    if not condition:
        raise AssertionError(message)


@contextmanager
def raises(
    error: type[Exception], what: str, *, mentions: str = "", unless: type[Exception] | None = None
) -> Iterator[None]:
    """The block must raise ``error`` (not ``unless``), whose message contains ``mentions``."""
    try:
        yield
    except error as exc:
        if unless is not None and isinstance(exc, unless):
            raise AssertionError(
                f"{what}: expected {error.__name__}, got {type(exc).__name__}"
            ) from exc
        expect(mentions in str(exc), f"{what}: message {str(exc)!r} should mention {mentions!r}")
        return
    except Exception as exc:
        raise AssertionError(
            f"{what}: expected {error.__name__}, got {type(exc).__name__}: {exc}"
        ) from exc
    raise AssertionError(f"{what}: expected {error.__name__}, nothing was raised")


_TASK = {"protocol": "fedavg", "config": {"lr": 0.05, "layers": [64, 32], "tag": "é✓"}, "n": None}
_AGG = {"loss": 0.25, "accuracy": 0.9, "samples": 120}
_PER_POD = {"pod-a": {"loss": 0.2, "samples": 60}, "pod-b": {"loss": 0.3, "samples": 60}}
BAD_JSON: list[tuple[Any, str]] = [
    ({"columns": {"a", "b"}}, "'columns'"),
    ({"opt": {"lr": float("nan")}}, "'lr'"),
    ({"opt": {"lr": float("inf")}}, "'lr'"),
    ({"obj": object()}, "'obj'"),
    ({"raw": b"bytes"}, "'raw'"),
    ({"weights": np.zeros(2)}, "'weights'"),
    ({"nested": [1, {2: "int key"}]}, "2"),
]
_BAD_METRICS: list[tuple[Any, Any, str]] = [
    ({"loss": float("nan")}, {}, "loss"),
    ({"loss": float("inf")}, {}, "loss"),
    ({"loss": -float("inf")}, {}, "loss"),
    ({"done": True}, {}, "done"),
    ({"loss": "0.5"}, {}, "loss"),
    ({"loss": None}, {}, "loss"),
    ({1: 0.5}, {}, "1"),
    ([("loss", 0.5)], {}, ""),
    ({"loss": 0.5}, {"pod-a": {"acc": float("nan")}}, "acc"),
    ({"loss": 0.5}, {"pod-a": 0.5}, "pod-a"),
    ({"loss": 0.5}, {3: {"acc": 0.5}}, "3"),
]
_ARRAYS = {
    "dense.weight": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "dense.bias": np.array([1.5, -2.0, 0.0], dtype=np.float64),
    "steps": np.array(7, dtype=np.int64),
    "mask": np.array([True, False, True]),
    "half": np.linspace(-1, 1, 5).astype(np.float16),
    "big": np.array([2**64 - 1, 0], dtype=np.uint64),
    "complex": np.array([1 + 2j], dtype=np.complex64),
    "empty": np.zeros((0, 3), dtype=np.int8),
    "strided": np.arange(20, dtype=np.int32).reshape(4, 5)[:, ::2],
    "big_endian": np.arange(4, dtype=">i4"),
}


def _same_arrays(got: dict[str, Any], want: dict[str, Any], what: str) -> None:
    expect(sorted(got) == sorted(want), f"{what}: names {sorted(got)} != {sorted(want)}")
    for name, array in want.items():
        value = got[name]
        expect(isinstance(value, np.ndarray), f"{what}: {name!r} is not a numpy array")
        expect(value.shape == array.shape, f"{what}: {name!r} has shape {value.shape}")
        expect(value.dtype == array.dtype.newbyteorder("="), f"{what}: {name!r} dtype changed")
        expect(np.array_equal(value, array), f"{what}: {name!r} values changed")
