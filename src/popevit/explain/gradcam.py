"""Grad-CAM (Selvaraju et al., ICCV 2017, arXiv:1610.02391) through the ``grad-cam`` package (``pytorch_grad_cam``).

Grad-CAM weights a layer's activation channels by their spatially averaged gradient, ``α_c = mean_ij ∂y/∂A_c,ij``,
and keeps ``ReLU(Σ_c α_c A_c)`` (Eq. 1-2 of the paper). For ResNet18 the layer is the last residual block. A ViT has
no spatial feature map, so its tokens are reshaped to one: the target layer is the first LayerNorm of the last block
(the input of the last attention, where patch tokens still reach the CLS readout; after the last block only the CLS
token feeds the head, so patch gradients there are zero for CLS-pooled models), and the reshape drops the
``num_prefix_tokens`` prefix tokens and folds the ``gh * gw`` patches into a (C, gh, gw) map.

``pytorch_grad_cam`` is a heavy import (it loads OpenCV): :func:`grad_cam` imports it when called.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn


def vit_blocks(model: nn.Module) -> nn.Module | None:
    """The block list of a popevit/timm ViT (``blocks``) or a torchvision ViT (``encoder.layers``), else ``None``."""
    blocks = getattr(model, "blocks", None)
    if isinstance(blocks, nn.ModuleList | nn.Sequential) and len(blocks):
        return blocks
    layers = getattr(getattr(model, "encoder", None), "layers", None)
    if isinstance(layers, nn.ModuleList | nn.Sequential) and len(layers):
        return layers
    return None


def cnn_target_layer(model: nn.Module) -> nn.Module:
    """The last residual block of a ResNet (any module path ending in ``layer4``), else the last ``Conv2d``."""
    for name, m in reversed(list(model.named_modules())):
        if name.split(".")[-1] == "layer4" and isinstance(m, nn.Sequential) and len(m):
            return m[-1]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no Conv2d layer and no ViT blocks: Grad-CAM has no target layer")
    return convs[-1]


def vit_target_layer(model: nn.Module) -> nn.Module:
    """The first LayerNorm of the last transformer block (its output is the last attention's input)."""
    blocks = vit_blocks(model)
    if blocks is None:
        raise ValueError(f"{type(model).__name__} has no transformer blocks (expected .blocks or .encoder.layers)")
    for m in blocks[-1].modules():
        if isinstance(m, nn.LayerNorm):
            return m
    raise ValueError(f"the last block of {type(model).__name__} has no LayerNorm to use as Grad-CAM target layer")


def tokens_to_grid(num_prefix_tokens: int, grid: tuple[int, int]) -> Callable[[Tensor], Tensor]:
    """A ``reshape_transform`` for ``pytorch_grad_cam``: (B, N, C) tokens -> (B, C, gh, gw) patch feature map."""
    gh, gw = grid

    def reshape(tokens: Tensor) -> Tensor:
        B, N, C = tokens.shape
        if N - num_prefix_tokens != gh * gw:
            raise ValueError(
                f"{N} tokens do not match {num_prefix_tokens} prefix tokens + a {gh}x{gw} grid; "
                "the Grad-CAM target layer must output (B, N, C) tokens"
            )
        patches = tokens[:, num_prefix_tokens:]  # (B, P, C)
        return patches.reshape(B, gh, gw, C).permute(0, 3, 1, 2)  # (B, C, gh, gw)

    return reshape


def grad_cam(
    model: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    layout: tuple[int, tuple[int, int]] | None = None,
) -> Tensor:
    """Grad-CAM maps of ``target`` classes.

    Args:
        model: a CNN (ResNet18) or a ViT; eval mode.
        x: (B, C, S, S) model input.
        target: (B,) class indices to explain.
        layout: ``(num_prefix_tokens, (gh, gw))`` for a ViT (turns on the token-to-grid reshape); ``None`` for CNNs.

    Returns:
        (B, S, S) maps in [0, 1] (the package min-max scales each map and resizes it to the input).
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if layout is None:
        layer, reshape = cnn_target_layer(model), None
    else:
        layer, reshape = vit_target_layer(model), tokens_to_grid(*layout)
    cam = GradCAM(model=model, target_layers=[layer], reshape_transform=reshape)
    try:
        with torch.enable_grad():
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in target])  # (B, S, S)
    finally:
        cam.activations_and_grads.release()
    return torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
