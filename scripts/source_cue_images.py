"""Variants of the Kaggle test tumours that each imitate one trait of Br35H, to find which trait a model reacts to.

Writes one folder per variant under OUT, each holding the same tumour images of the split's test rows:

- ``original``: as they are;
- ``small_jpeg``: shrunk so the longer side is 225 px (Br35H's usual size) and re-encoded as JPEG at a quality drawn
  from 30-95 (seeded);
- ``inverted``: grey levels inverted inside the head (pixels above 10% of the maximum), background left black, so
  bright lesions become dark and the skull and crop stay where they were.

``popevit predict RUN OUT/<variant>`` then gives each variant's share called tumour (docs/experiments/source_confound.md):

    python scripts/source_cue_images.py runs/splits/kaggle_seed0.csv runs/source/cues
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

import numpy as np
from PIL import Image

VARIANTS = ("original", "small_jpeg", "inverted")


def variants(path: Path, rng: random.Random) -> dict[str, tuple[Image.Image, dict]]:
    """The three variants of one image, each with the keyword arguments for ``Image.save``."""
    g = Image.open(path).convert("L")
    scale = 225 / max(g.size)
    small = g.resize((max(1, round(g.width * scale)), max(1, round(g.height * scale))), Image.Resampling.BILINEAR)
    a = np.asarray(g, dtype=np.uint8)
    head = a > 0.1 * a.max()
    inv = np.where(head, 255 - a, 0).astype(np.uint8)
    return {
        "original": (g, {"format": "PNG"}),
        "small_jpeg": (small, {"format": "JPEG", "quality": rng.randint(30, 95)}),
        "inverted": (Image.fromarray(inv), {"format": "PNG"}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("manifest", type=Path, help="a popevit split manifest (path, label, split columns)")
    ap.add_argument("out", type=Path, help="folder to write OUT/<variant>/<name> into (must not exist)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.out.exists():
        raise SystemExit(f"error: {args.out} exists; pass a new folder")
    rows = [r for r in csv.DictReader(args.manifest.open()) if r["split"] == args.split and r["label"] != "notumor"]
    rng = random.Random(args.seed)
    for v in VARIANTS:
        (args.out / v).mkdir(parents=True)
    for i, r in enumerate(rows):
        for v, (img, kw) in variants(Path(r["path"]), rng).items():
            ext = ".jpg" if kw["format"] == "JPEG" else ".png"
            img.save(args.out / v / f"{i:04d}_{r['label']}{ext}", **kw)
    print(f"{len(rows)} tumour images x {len(VARIANTS)} variants -> {args.out}")


if __name__ == "__main__":
    main()
