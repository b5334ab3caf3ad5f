"""Score the plain ResNet18 recipe's probabilities (scripts/plain_resnet18.py) with popevit's metrics.

Writes, next to the CSVs, ``metrics.json`` (internal test: 4 classes; external sets: tumour / no tumour through the
label map, and again on the images with no duplicate in the split's training rows) and a popevit-format
``predictions.csv`` per set under ``eval/<set>/``, so that the plain run pairs with popevit runs in the same tests.

    python scripts/score_plain.py runs/source/plain_resnet18-s0 --manifest runs/splits/kaggle_seed0.csv \
        --label-map "yes=tumor,no=notumor,glioma|meningioma|pituitary=tumor"
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np

from popevit.data.manifest import read_manifest
from popevit.evaluation.evaluate import novel_mask, summarize
from popevit.evaluation.labelmap import parse_label_map, resolve_label_map
from popevit.evaluation.predictions import Predictions


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--manifest", type=Path, required=True, help="the split the plain run trained on")
    ap.add_argument("--label-map", default="yes=tumor,no=notumor,glioma|meningioma|pituitary=tumor")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--joint", type=Path, help="a manifest of several sources: also score its held-out br35h rows")
    a = ap.parse_args()
    out = {}
    for path in sorted(a.run.glob("*.csv")):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        model_classes = [k[2:] for k in rows[0] if k.startswith("p_")]
        proba = np.array([[float(r[f"p_{c}"]) for c in model_classes] for r in rows])
        data_classes = sorted({r["label"] for r in rows})
        rules = () if set(data_classes) <= set(model_classes) else parse_label_map(a.label_map)
        lmap = resolve_label_map(rules, model_classes, data_classes)
        y = np.array([lmap.targets.index(lmap.data[r["label"]]) for r in rows])
        preds = Predictions([r["path"] for r in rows], y, lmap.collapse(proba, model_classes), lmap.targets)
        tag = f"data-{path.stem}" if rules else path.stem  # the folders popevit evaluate would write
        preds.save(a.run / "eval" / tag / "predictions.csv")
        result = {"n": len(rows), "classes": lmap.targets, **summarize(preds, a.n_boot, 0)}
        if rules:
            mask, info = novel_mask(preds.paths, a.manifest)
            result["dedup"] = {**info, **summarize(preds.subset(mask), a.n_boot, 0)}
        (a.run / "eval" / tag / "metrics.json").write_text(json.dumps(result, indent=2))
        out[path.stem] = result
        if rules and a.joint is not None:
            held = {str(r.path) for r in read_manifest(a.joint).select("test") if r.source == path.stem}
            sub = preds.subset(np.array([str(Path(p).resolve()) in held for p in preds.paths]))
            tag = a.run / "eval" / f"{a.joint.stem}-test-{path.stem}"
            sub.save(tag / "predictions.csv")
            (tag / "metrics.json").write_text(json.dumps({"n": len(sub.paths), **summarize(sub, a.n_boot, 0)}, indent=2))
        m = result["metrics"]
        keys = ["accuracy", "auroc_macro"] + (["tumor_sensitivity", "tumor_specificity"] if rules else [])
        print(path.stem, {k: round(m[k]["value"], 4) for k in keys})


if __name__ == "__main__":
    main()
