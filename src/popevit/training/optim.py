"""Optimizer parameter groups and the per-batch learning-rate schedule of the seed recipe.

Weight decay applies to weight matrices/kernels only. A parameter escapes decay when the model declares it in
``no_weight_decay()`` (positional embeddings, CLS token, RoPE-mixed frequencies, PoPE's delta) or when it has fewer
than two dimensions (biases, norm scales). Declared names win over the shape rule, so a 2-D learned PE table is
never decayed, which nanoGPT's ``p.dim() >= 2`` rule alone would get wrong.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from popevit.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into a decayed and a non-decayed group.

    Args:
        model: the network; ``model.no_weight_decay()`` (optional) returns full parameter names to exclude.
        weight_decay: decay for the decayed group.

    Returns:
        Two param-group dicts for a torch optimizer (empty groups dropped).
    """
    declared = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name in declared or p.ndim < 2 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def layer_decay_groups(model: nn.Module, weight_decay: float, lr: float, decay: float) -> list[dict]:
    """Layer-wise lr decay (BEiT, Bao et al. 2022, arXiv:2106.08254, Sec. 2.5): the head trains at ``lr``, block
    ``i`` (0-based) of ``L`` at ``lr * decay^(L - i)`` (the final norm with the last block), the stem (patch
    embedding, prefix tokens, positional encoding) at ``lr * decay^(L + 1)``. Layers come from the model's
    timm-style ``group_matcher()``; the grouping and the decay/no-decay split are timm's
    ``param_groups_layer_decay``, with our ``no_weight_decay()`` names."""
    from timm.optim import param_groups_layer_decay

    if not hasattr(model, "group_matcher"):
        raise ValueError(
            f"optim.layer_decay needs a model with layers to decay ({type(model).__name__} has no group_matcher()); "
            "use it with popevit's ViT or timm models, or set optim.layer_decay=null"
        )
    declared = list(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else []
    groups = param_groups_layer_decay(model, weight_decay, no_weight_decay_list=declared, layer_decay=decay)
    for g in groups:  # torch's LambdaLR scales each group's own lr; timm leaves the scale to its schedulers
        g["lr"] = lr * g.pop("lr_scale")
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.layer_decay is not None:
        groups = layer_decay_groups(model, cfg.weight_decay, cfg.lr, cfg.layer_decay)
    else:
        groups = param_groups(model, cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)
    if cfg.name == "adam":
        # Plain Adam has L2-coupled decay; keep it so that vit_b16_head_3class.yaml's "Adam 1e-4" is what it says.
        return torch.optim.Adam(groups, lr=cfg.lr, betas=cfg.betas)
    # torch refuses Nesterov without momentum
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)


def warmup_cosine(
    step: int,
    total_steps: int,
    warmup_steps: int,
    min_ratio: float = 0.0,
    cosine: bool = True,
    elapsed: float = 0.0,
) -> float:
    """LR multiplier at ``step``: linear warm-up from ~0 to 1, then cosine decay to ``min_ratio`` (or constant).

    ``elapsed`` is the share of a wall-clock budget already used (``optim.schedule_clock=time``). The schedule then
    runs on whichever is further along, the steps or the budget: warm-up takes the same share of either, and the decay
    reaches ``min_ratio`` by the end of either.
    """
    warm = warmup_steps / max(1, total_steps)  # warm-up's share of the schedule
    if warmup_steps > 0 and step < warmup_steps and elapsed < warm:
        return max((step + 1) / warmup_steps, elapsed / warm)
    if not cosine:
        return 1.0
    by_steps = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    by_time = (elapsed - warm) / (1.0 - warm) if warm < 1.0 else 0.0
    progress = min(1.0, max(0.0, by_steps, by_time))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
