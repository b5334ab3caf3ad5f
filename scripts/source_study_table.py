"""The tables of docs/experiments/source_confound.md, read from the runs' evaluations (nothing is recomputed).

For each run folder (or the plain recipe's folder scored by scripts/score_plain.py): internal accuracy and macro AUROC
on the Kaggle test split, tumour sensitivity and no-tumour specificity on all of Br35H and on the Br35H images with no
duplicate in the run's training split, and on the Br35H groups held out by the joint split; then the run's compute.

    python scripts/source_study_table.py runs/source/kaggle/* runs/source/joint/* runs/source/plain_resnet18-s0
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

INTERNAL = ("test", "test-kaggle")
EXTERNAL = "data-br35h"
HELD_OUT = ("kaggle_br35h_seed0-test-br35h", "test-br35h")


def _read(run: Path, tags: tuple[str, ...] | str) -> dict | None:
    for tag in (tags,) if isinstance(tags, str) else tags:
        path = run / "eval" / tag / "metrics.json"
        if path.is_file():
            return json.loads(path.read_text())
    return None


def _ci(m: dict | None, key: str) -> str:
    if not m or key not in m:
        return "-"
    v = m[key]
    return f"{v['value']:.3f} [{v['lo']:.3f}, {v['hi']:.3f}]"


def _compute(run: Path) -> str:
    info = run / "run.json"
    if not info.is_file():
        return "-"
    r = json.loads(info.read_text())
    wall = r.get("wall_s") or r.get("train_wall_s")
    seen = r.get("images_seen")
    epochs = r.get("epochs", r.get("args", {}).get("epochs", "-"))  # the plain recipe records its arguments
    return f"{epochs} ep, {seen or '-'} img, {wall / 60:.0f} min" if wall else "-"


def main(runs: list[str]) -> None:
    print("| run | Kaggle test accuracy | Kaggle test macro AUROC | Br35H tumour sensitivity (all / no duplicate) | "
          "Br35H no-tumour specificity | held-out Br35H groups: sensitivity / specificity | compute |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name in runs:
        run = Path(name)
        inner, ext, held = _read(run, INTERNAL), _read(run, EXTERNAL), _read(run, HELD_OUT)
        im = (inner or {}).get("metrics")
        em, dm = (ext or {}).get("metrics"), (ext or {}).get("dedup", {}).get("metrics")
        hm = (held or {}).get("metrics")
        sens = f"{_ci(em, 'tumor_sensitivity')} / {_ci(dm, 'tumor_sensitivity')}"
        held_cell = f"{_ci(hm, 'tumor_sensitivity')} / {_ci(hm, 'tumor_specificity')}"
        print(f"| {run.name} | {_ci(im, 'accuracy')} | {_ci(im, 'auroc_macro')} | {sens} | "
              f"{_ci(em, 'tumor_specificity')} | {held_cell} | {_compute(run)} |")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
