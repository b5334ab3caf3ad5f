"""Per-run images seen, time cap, wall time and test AUROC/accuracy of a set of runs, and how images seen correlate
with the test metrics (docs/experiments/pe_study_conv_stem.md: does a run's load-dependent share of a wall-clock
budget decide its rank?). Every run needs ``eval/test`` and ``eval/test-192px``.

Run from the repository root:
``.venv/bin/python scripts/images_seen_vs_auroc.py 'runs/gap/s5/cs_*-s?' > results/pe_study_conv_stem/images_seen_vs_auroc.txt``
"""

import glob
import json
import os
import sys

import numpy as np
from scipy.stats import pearsonr, spearmanr


def metric(run: str, tag: str, name: str) -> float:
    return json.load(open(f"{run}/eval/{tag}/metrics.json"))["metrics"][name]["value"]


rows = []
for r in sorted(glob.glob(sys.argv[1] if len(sys.argv) > 1 else "runs/gap/s5/cs_*-s?")):
    info = json.load(open(f"{r}/run.json"))
    rows.append(
        (
            os.path.basename(r),
            info["images_seen"],
            info["hit_time_cap"],
            round(info["wall_s"] / 60, 1),
            metric(r, "test", "auroc_macro"),
            metric(r, "test", "accuracy"),
            metric(r, "test-192px", "auroc_macro"),
        )
    )
for x in rows:
    print(*x, sep="\t")
seen = np.array([x[1] for x in rows])
au = np.array([x[4] for x in rows])
acc = np.array([x[5] for x in rows])
print("pearson seen~auroc", pearsonr(seen, au))
print("spearman", spearmanr(seen, au))
print("pearson seen~acc", pearsonr(seen, acc))
cap = np.array([x[2] for x in rows])
print("capped mean auroc", au[cap].mean(), cap.sum(), "uncapped", au[~cap].mean(), (~cap).sum())
