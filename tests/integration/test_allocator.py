"""glibc malloc settings for training processes (fedloom.worker._allocator)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fedloom.worker._allocator import keep_freed_memory, user_tuned_malloc

# allocates and frees a 64 MiB tensor (a W3-sized gradient) a few times, before and after
# keep_freed_memory(), and prints the page faults each loop cost
_FAULTS = """
import json, resource, sys, torch
from fedloom.worker._allocator import keep_freed_memory

def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        block = torch.ones(16 << 20)  # 64 MiB
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

plain = faults()
applied = keep_freed_memory()
# the heap grows to its working size over the first loops (small allocations made between
# the big ones can land in a freed block and push the next one higher), then stays
for _ in range(3):
    faults()
print(json.dumps({"plain": plain, "applied": applied, "kept": faults()}))
"""


def _run(env: dict[str, str]) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS], env=env, check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, int] = json.loads(out)
    return result


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_memory_is_reused_without_page_faults() -> None:
    result = _run(_clean_env())
    assert result["applied"] == 1
    # each 64 MiB block is 16,384 fresh pages with glibc's default mmap per block
    assert result["plain"] > 5 * 10_000
    assert result["kept"] < 500


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_users_malloc_settings_win() -> None:
    result = _run(_clean_env() | {"MALLOC_MMAP_THRESHOLD_": "131072"})
    assert result["applied"] == 0
    assert result["kept"] > 5 * 10_000  # still an mmap (and its faults) per block


@pytest.mark.parametrize(
    ("env", "tuned"),
    [
        ({}, False),
        ({"MALLOC_ARENA_MAX": "2"}, False),  # not about the heap's growth or trimming
        ({"MALLOC_TRIM_THRESHOLD_": "0"}, True),
        ({"MALLOC_MMAP_MAX_": "0"}, True),
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4096"}, True),
        ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, False),
    ],
)
def test_user_settings_are_recognised(env: dict[str, str], tuned: bool) -> None:
    assert user_tuned_malloc(env) is tuned


@pytest.mark.parametrize("threshold", [-1, 2**31])
def test_a_threshold_glibc_cannot_take_is_an_error(threshold: int) -> None:
    with pytest.raises(ValueError, match="trim_threshold"):
        keep_freed_memory(threshold)
