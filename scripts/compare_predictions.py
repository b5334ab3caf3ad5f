"""Paired tests between prediction files: runs that are not popevit runs (the plain script's) beside popevit runs.

Each ``NAME=FILE`` is a popevit-format ``predictions.csv`` (``popevit evaluate`` or ``scripts/score_plain.py``), all
on the same images; writes ``compare.json`` and ``compare.md`` as ``popevit compare`` does (paired bootstrap of every
metric, McNemar, DeLong; Benjamini-Hochberg q over the pairs).

    python scripts/compare_predictions.py results/source_confound/plain_data_path \
        script=runs/source/plain_resnet18-s0/eval/data-br35h/predictions.csv \
        popevit=runs/source/kaggle/resnet18_plain-s0/eval/data-br35h/predictions.csv
"""

from __future__ import annotations

import argparse
from pathlib import Path

from popevit.evaluation.compare import align, compare_predictions, to_markdown
from popevit.evaluation.evaluate import write_json
from popevit.evaluation.predictions import Predictions
from popevit.io import atomic_write_text


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("runs", nargs="+", help="NAME=predictions.csv")
    ap.add_argument("--n-boot", type=int, default=1000)
    a = ap.parse_args()
    names, files = zip(*(r.split("=", 1) for r in a.runs), strict=True)
    preds = align([Predictions.load(Path(f)) for f in files], list(names))
    result = compare_predictions([[p] for p in preds], list(names), [[n] for n in names], n_boot=a.n_boot, seed=0)
    result["source"] = {"predictions": dict(zip(names, files, strict=True))}
    a.out.mkdir(parents=True, exist_ok=True)
    write_json(a.out / "compare.json", result)
    atomic_write_text(a.out / "compare.md", to_markdown(result))
    print(to_markdown(result))


if __name__ == "__main__":
    main()
