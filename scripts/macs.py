"""Forward multiply-accumulates per 128-px image, whole model and tokeniser, and parameters.

Counted by torch's FlopCounterMode (matrix products and convolutions; FLOPs / 2). Run from the repository root:
``.venv/bin/python scripts/macs.py > results/budget_30min/macs.md`` (docs/experiments/budget_30min.md).
"""

import torch
from torch.utils.flop_counter import FlopCounterMode

from popevit.models import create_model


def macs(fn, x: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter:
        fn(x)
    return counter.get_total_flops() / 2e6


x = torch.randn(1, 1, 128, 128)
print("| model | forward MMAC / image | of which tokeniser | parameters |\n|---|---:|---:|---:|")
for label, name, kw in [
    ("ResNet18", "resnet18", {}),
    ("ViT, conv stem", "vit_p16_w192_d6", {"stem": "conv", "pos_enc": "rope_axial"}),
    ("ViT, residual stem", "vit_p16_w192_d6", {"stem": "res", "pos_enc": "rope_axial"}),
]:
    model = create_model(name, num_classes=4, img_size=128, **kw).eval()
    stem = f"{macs(model.patch_embed, x):.0f}" if hasattr(model, "patch_embed") else "-"
    params = sum(p.numel() for p in model.parameters())
    print(f"| {label} | {macs(model, x):.0f} | {stem} | {params / 1e6:.2f} M |")
