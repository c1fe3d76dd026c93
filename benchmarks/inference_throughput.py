"""Files per second for batched inference over a folder of small images.

Writes ``--images`` random RGB PNGs (16x16) to a temporary folder, then for each batch size
runs the real :class:`~fedloom.protocols.BatchedInference` flow end to end on one pod over
the in-memory hub (a small MLP over the flattened pixels), once in the pod's own process and
(``--isolated``, the default) once in the pod's spawned child process. Each run uses a new
:class:`~fedloom.LocalFederation` without a pod store, so it starts with no processed-files
history. Prints one JSON line: ``setup_s`` (writing the images) and, per mode and batch
size, the task's seconds and files per second.

Usage: ``python benchmarks/inference_throughput.py [--images 10000] [--batch-sizes 16 128]
[--no-isolated] [--profile 25]``; ``--profile N`` prints the top N functions by cumulative
time of one in-process run at the largest batch size to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fedloom import LocalFederation, ModelSpec
from fedloom.datasources import FileSource
from fedloom.protocols import BatchedInference
from fedloom.worker import IsolationSettings

IMAGE_SIZE = (16, 16)
DEFAULT_IMAGES = 10_000
DEFAULT_BATCH_SIZES = (16, 128)


def write_images(folder: Path, count: int, seed: int = 0) -> float:
    """Write ``count`` random RGB PNGs into ``folder``; return the seconds it took."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    height, width = IMAGE_SIZE
    pixels = rng.integers(0, 256, size=(count, height, width, 3), dtype=np.uint8)
    for index in range(count):
        # compress_level=1: the benchmark measures reading, not how long zlib takes to write
        image = Image.fromarray(pixels[index])  # uint8 (h, w, 3) is RGB
        image.save(folder / f"img-{index:06d}.png", compress_level=1)
    return time.perf_counter() - started


async def run_once(folder: Path, images: int, batch_size: int, isolated: bool) -> float:
    """One inference task over ``folder``; return its seconds (federation start included)."""
    source = FileSource(
        folder, pattern="*.png", loader="image", loader_options={"size": list(IMAGE_SIZE)}
    )
    features = IMAGE_SIZE[0] * IMAGE_SIZE[1] * 3
    model = ModelSpec("mlp", {"in_features": features, "hidden": [32], "out_features": 10})
    started = time.perf_counter()
    async with LocalFederation(
        {"pod-a": {"default": source}},
        isolation=IsolationSettings() if isolated else None,
    ) as federation:
        run = await federation.run(BatchedInference(model, batch_size=batch_size))
    seconds = time.perf_counter() - started
    rows = run.result.rows.get("pod-a", []) if run.result is not None else []
    if len(rows) != images:
        raise SystemExit(
            f"expected {images} prediction rows from pod-a, got {len(rows)} "
            f"(aborted: {run.aborted}, failures: {run.result.failures if run.result else None})"
        )
    return seconds


def measure(seconds: float, images: int) -> dict[str, float]:
    return {"seconds": round(seconds, 3), "files_per_s": round(images / seconds, 1)}


def profile(folder: Path, images: int, batch_size: int, top: int) -> None:
    """Print the ``top`` functions by cumulative time of one in-process run to stderr."""
    profiler = cProfile.Profile()
    profiler.enable()
    asyncio.run(run_once(folder, images, batch_size, isolated=False))
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(top)
    print(text.getvalue(), file=sys.stderr)


def main(args: argparse.Namespace) -> dict[str, object]:
    if args.images < 1:
        raise SystemExit("--images must be >= 1")
    if not args.batch_sizes or min(args.batch_sizes) < 1:
        raise SystemExit("--batch-sizes must be one or more integers >= 1")
    modes = {"in_process": False}
    if args.isolated:
        modes["child_process"] = True
    report: dict[str, object] = {"images": args.images, "image_size": list(IMAGE_SIZE)}
    with tempfile.TemporaryDirectory(prefix="fedloom-bench-") as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        report["setup_s"] = round(write_images(folder, args.images), 3)
        for mode, isolated in modes.items():
            report[mode] = {
                str(size): measure(
                    asyncio.run(run_once(folder, args.images, size, isolated)), args.images
                )
                for size in args.batch_sizes
            }
        if args.profile:
            profile(folder, args.images, max(args.batch_sizes), args.profile)
    report["cores"] = os.cpu_count()
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(DEFAULT_BATCH_SIZES))
    parser.add_argument(
        "--isolated",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure with the pod's spawned child process (default: on)",
    )
    parser.add_argument("--profile", type=int, default=0, metavar="N")
    json.dump(main(parser.parse_args()), sys.stdout)
    print()
