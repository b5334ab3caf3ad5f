"""Do trained models use the original size, via texture, as a no-tumour cue?

The texture probe's counterfactual (scripts/texture_probe.py) shows that a texture probe partly reads the decode-and-resample path of small images.
This asks the models themselves: every test image of side >= 512 is scored as the model saw it in evaluation (the
cached array) and again after its original is first shrunk (Lanczos) to SIDE pixels, the median side of the small
no-tumour images, then preprocessed as usual. A control shrinks to 400 px instead, a perturbation of the same
kind that does not reach the small-image range. If the models learnt "small-image texture means no tumour", the
236-px copies of tumour images must be called no tumour more often than the 400-px copies.

Run from the repository root:
``.venv/bin/python scripts/shrink_test.py runs/splits/kaggle_train_seed0.csv RUN... > results/data_audit/shrink_test.md``
(docs/experiments/data_audit.md)
"""

import csv
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from popevit.artifact import load_artifact
from popevit.data.dataset import ImageDataset
from popevit.data.decode import load_image
from popevit.data.preprocess import preprocess_image, to_tensor

SIDES = (236, 400)  # 236: median side of the small no-tumour images (probe.py); 400: control


def shrunk_array(path: str, side: int, cfg) -> np.ndarray:
    img = load_image(path)
    scale = side / max(img.width, img.height)
    img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
    return preprocess_image(img, cfg)


def main(manifest: str, runs: list[str]) -> None:
    torch.set_num_threads(1)
    with open(manifest, encoding="utf-8-sig") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test" and max(int(r["width"]), int(r["height"])) >= 512]
    n_tumour = sum(r["label"] != "notumor" for r in rows)
    print(f"{len(rows)} test images of side >= 512 ({n_tumour} tumour) from {manifest}")
    print("\n| run | version | accuracy | tumour images called no tumour | mean P(no tumour), tumour images |")
    print("|---|---|---:|---:|---:|")
    cache: dict[tuple, list[np.ndarray]] = {}
    for run in runs:
        model, meta = load_artifact(run)
        cfg = meta.preprocess
        key = tuple(sorted(cfg.model_dump().items()))
        if key not in cache:
            ds = ImageDataset([Path(r["path"]) for r in rows], [0] * len(rows), cfg,
                              content_hashes=[r["content_hash"] for r in rows])  # fmt: skip
            ds.prepare(workers=1)
            cache[key] = [[ds.array(i) for i in range(len(rows))]]
            cache[key] += [[shrunk_array(r["path"], side, cfg) for r in rows] for side in SIDES]
        y = np.array([meta.classes.index(r["label"]) for r in rows])
        tumour = y != meta.classes.index("notumor")
        versions = ["as evaluated", *(f"shrunk to {s} px first" for s in SIDES)]
        for version, arrays in zip(versions, cache[key], strict=True):
            x = torch.stack([to_tensor(a, cfg) for a in arrays])
            with torch.no_grad():
                p = torch.cat([model(b).softmax(-1) for b in x.split(64)]).numpy()
            pred = p.argmax(1)
            nt = meta.classes.index("notumor")
            print(f"| {Path(run).name} | {version} | {np.mean(pred == y):.3f} | "
                  f"{np.sum(pred[tumour] == nt)} / {tumour.sum()} | {p[tumour, nt].mean():.3f} |")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
