"""Validation accuracy and macro AUROC of a run's EMA weights vs its raw weights.

Both come from ``checkpoints/last.ckpt``: Lightning's EMAWeightAveraging stores the averaged weights as
``state_dict`` and the raw ones as ``current_model_state``. Run from the repository root:
``.venv/bin/python scripts/ema_vs_raw.py RUN`` (docs/experiments/budget_15min.md).
"""

import json
import sys
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

from popevit.config import load_config
from popevit.data.datamodule import MRIDataModule
from popevit.models import create_model

torch.set_num_threads(2)
run = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/gap/pilot/recipe-s0")
cfg = load_config(run / "config.yaml")
dm = MRIDataModule(cfg.data, run / "manifest.csv", seed=0)
dm.setup("fit")
meta = json.loads((run / "model.json").read_text())["model"]
ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
for key in ("state_dict", "current_model_state"):
    model = create_model(meta["name"], **meta["kwargs"]).eval()
    model.load_state_dict({k[len("model.") :]: v for k, v in ckpt[key].items() if k.startswith("model.")})
    probs, labels = [], []
    with torch.no_grad():
        for x, y in dm.val_dataloader():
            probs.append(model(x).softmax(-1))
            labels.append(y)
    p, y = torch.cat(probs), torch.cat(labels)
    acc = (p.argmax(-1) == y).float().mean().item()
    auroc = roc_auc_score(y, p, multi_class="ovr")
    counts = torch.bincount(p.argmax(-1), minlength=p.shape[1]).tolist()
    print(f"{key}: accuracy {acc:.4f}, macro AUROC {auroc:.4f}, predicted class counts {counts}")
