"""What the plain script's and popevit's data paths make of the same images: grey-level statistics per source/class.

For a random sample of each class folder, the 128-px images of each loader of ``scripts/plain_resnet18.py``
(``--images``): share of pixels above 10% of the image's maximum (the head), mean and sd of the grey levels there,
the mean of the top-left 8x8 corner (background) and the 99th percentile.

    python scripts/data_path_stats.py ../shared/data/brain-tumor-mri/Training ../shared/data/br35h --per-class 80
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from plain_resnet18 import LOADERS


def stats(img: np.ndarray) -> tuple[float, ...]:
    a = img.astype(np.float32)
    head = a > 0.1 * a.max()
    return head.mean(), a[head].mean(), a[head].std(), a[:8, :8].mean(), float(np.percentile(a, 99))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folders", nargs="+", type=Path, help="folders of <class>/<image> files")
    ap.add_argument("--per-class", type=int, default=80)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    print("| images | loader | head share | mean in head | sd in head | corner mean | p99 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for folder in a.folders:
        for cls in sorted(p for p in folder.iterdir() if p.is_dir()):
            files = sorted(str(f) for f in cls.iterdir() if f.suffix.lower() in {".jpg", ".jpeg", ".png"})
            files = rng.sample(files, min(a.per_class, len(files)))
            for name, load in LOADERS.items():
                m = np.mean([stats(load(f)) for f in files], axis=0)
                print(
                    f"| {folder.name}/{cls.name} | {name} | {m[0]:.3f} | "
                    + " | ".join(f"{v:.1f}" for v in m[1:])
                    + " |"
                )


if __name__ == "__main__":
    main()
