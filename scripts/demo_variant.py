"""One variant of ``popevit demo``'s recipe: the demo with other settings and extra config overrides.

Every row of docs/experiments/demo_recipe.md was made with this script or with ``popevit demo`` itself; it prints
each model's test accuracy [95% CI] and training seconds, and the demo's timings.

    python scripts/demo_variant.py runs/demo_variants/lr1e-3 --settings '{"epochs": 25, "lr": 1e-3}'
    python scripts/demo_variant.py runs/demo_variants/conv --settings '{"epochs": 30}' --set model.stem=conv
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from popevit.demo import DemoSettings, run_demo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--settings", default="{}", help="JSON of DemoSettings fields, e.g. epochs, lr, batch_size")
    ap.add_argument("--set", action="append", default=[], help="config override applied after the demo's own")
    a = ap.parse_args()
    settings = DemoSettings(**{**json.loads(a.settings), "overrides": tuple(a.set)})
    result = run_demo(a.out, settings, echo=lambda _: None)
    for row in result.rows:
        acc = row.accuracy
        print(f"{row.name}: accuracy {acc[0]:.3f} [{acc[1]:.3f}, {acc[2]:.3f}], trained in {row.train_s:.0f} s")
    print("timings (wall s, CPU s):", {k: (round(w), round(c)) for k, (w, c) in result.timings.items()})


if __name__ == "__main__":
    main()
