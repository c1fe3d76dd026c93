"""Write the example pods' data into ``data/``: scikit-learn's wine table and small images.

    python make_data.py

- ``data/pod-a.csv``, ``data/pod-b.csv``: the 178 wines of scikit-learn's wine dataset
  (it ships with scikit-learn: no download), 13 standardised features and ``label``
  (the cultivar, 0-2), split in two unequal halves.
- ``data/scans-a/``, ``data/scans-b/``: labelled 16x16 RGB PNGs in class folders
  ``bright/`` and ``dark/`` (the class is the folder), 24 per pod, to train on.
- ``data/inbox-a/``, ``data/inbox-b/``: 10 new, unlabelled PNGs per pod to run a model
  over, and one corrupt file each, which a batched task reports and goes past.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_wine

HERE = Path(__file__).resolve().parent


def wine(data: Path) -> None:
    wines = load_wine(as_frame=True)
    features = wines.data
    frame = (features - features.mean()) / features.std()
    frame.columns = [name.replace("/", "_") for name in frame.columns]
    frame["label"] = wines.target
    order = np.random.default_rng(0).permutation(len(frame))
    cut = len(frame) * 2 // 5
    frame.iloc[order[:cut]].to_csv(data / "pod-a.csv", index=False)
    frame.iloc[order[cut:]].to_csv(data / "pod-b.csv", index=False)


def scan(rng: np.random.Generator, level: int, path: Path) -> None:
    pixels = np.clip(rng.normal(level, 30, size=(16, 16, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)


def scans(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for label, level in (("bright", 190), ("dark", 60)):
        (folder / label).mkdir(parents=True, exist_ok=True)
        for index in range(12):
            scan(rng, level, folder / label / f"scan-{index:03d}.png")


def inbox(folder: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(10):
        scan(rng, int(rng.choice([60, 190])), folder / f"new-{index:03d}.png")
    (folder / "new-broken.png").write_bytes(b"this is not a PNG file")


def main() -> None:
    data = HERE / "data"
    data.mkdir(exist_ok=True)
    wine(data)
    for pod, seed in (("a", 1), ("b", 2)):
        scans(data / f"scans-{pod}", seed)
        inbox(data / f"inbox-{pod}", seed + 10)
    print(f"wrote {data}")


if __name__ == "__main__":
    main()
