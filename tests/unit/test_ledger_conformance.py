"""The processed-files ledger suite on the pod stores, and proof that it catches bugs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from fedloom.store import FailedFile, MemoryPodStore, SqlitePodStore
from fedloom.testing import FileLedger, check_ledger

FACTORIES: dict[str, Callable[[Path], FileLedger]] = {
    "memory": lambda folder: MemoryPodStore(),
    "sqlite": lambda folder: SqlitePodStore(folder / "pod.db"),
}


@pytest.mark.parametrize("kind", sorted(FACTORIES))
def test_pod_stores_keep_the_ledger(kind: str) -> None:
    check_ledger(FACTORIES[kind])


def test_the_suite_catches_failures_listed_out_of_order() -> None:
    class Unsorted(MemoryPodStore):
        def failed_files(self, task_hash: str) -> list[FailedFile]:
            return super().failed_files(task_hash)[::-1]

    with pytest.raises(AssertionError, match="'failed_files' failed: not sorted by name"):
        check_ledger(lambda folder: Unsorted())


def test_the_suite_catches_a_store_that_forgets_an_update() -> None:
    class FirstWins(MemoryPodStore):
        def record_processed_files(self, task_hash: str, files: Sequence[tuple[str, int]]) -> None:
            known = self.processed_files(task_hash)
            if isinstance(files, list | tuple):
                files = [entry for entry in files if not (entry and entry[0] in known)]
            super().record_processed_files(task_hash, files)

    with pytest.raises(AssertionError, match="'processed_files' failed: upsert"):
        check_ledger(lambda folder: FirstWins())
