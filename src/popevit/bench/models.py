"""What is timed: popevit ViTs per positional encoding, timm's ``VisionTransformer`` twin, one training step.

A benchmark *size* names a preset, an input side and a batch (:data:`SIZES`): ``cpu`` is the default CPU
configuration (``vit_p16_w192_d6``, 128 px, batch 32, as in ``configs/experiments/vit_128px.yaml``), ``seed`` the
224-px configuration of the encoding study (``vit_p16_w512_d6``, batch 32, ``configs/experiments/pe_study_224px.yaml``)
and ``tiny`` a test-sized one.

The reference is timm's ``VisionTransformer`` (timm 1.x) with the dimensions of the popevit ViT (:func:`timm_twin`):
same width, depth, heads, MLP ratio, patch, input size and channels, pooling and class token, no position embedding
(``pos_embed="none"``), so ``none / timm`` compares the same arithmetic. The only structural difference is that timm's
mean pooling normalises the pooled vector (``fc_norm``) where popevit normalises every token before pooling.

One training step is forward + cross-entropy + backward + ``AdamW.step`` + ``zero_grad(set_to_none=True)``, under
bf16 autocast when asked (GPU).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from popevit.registry import Registry

TIMM = "timm"


@dataclass(frozen=True)
class BenchSize:
    """A benchmarked configuration: ``preset`` at ``img_size`` px with training batch ``batch``."""

    preset: str
    img_size: int
    batch: int
    description: str


SIZES: Registry[BenchSize] = Registry("benchmark size")
SIZES.add("tiny", BenchSize("vit_p8_w32_d2", 32, 8, "test size: vit_p8_w32_d2, 32 px, batch 8"))
SIZES.add("cpu", BenchSize("vit_p16_w192_d6", 128, 32, "default CPU configuration: vit_p16_w192_d6, 128 px, batch 32"))
SIZES.add("seed", BenchSize("vit_p16_w512_d6", 224, 32, "224-px study configuration: vit_p16_w512_d6, batch 32"))


def build_model(name: str, size: BenchSize, *, num_classes: int = 4, in_chans: int = 1) -> nn.Module:
    """A popevit ViT with positional encoding ``name`` at ``size``, or its timm twin when ``name == "timm"``."""
    from popevit.models import create_model

    if name == TIMM:
        ref = create_model(
            size.preset, num_classes=num_classes, in_chans=in_chans, img_size=size.img_size, pos_enc="none"
        )
        return timm_twin(ref)
    return create_model(size.preset, num_classes=num_classes, in_chans=in_chans, img_size=size.img_size, pos_enc=name)


def timm_twin(model: nn.Module) -> nn.Module:
    """timm's ``VisionTransformer`` with the dimensions of popevit ViT ``model`` and no position embedding.

    Args:
        model: a :class:`popevit.models.ViT`.

    Returns:
        A freshly initialised ``timm.models.vision_transformer.VisionTransformer``.
    """
    from timm.models.vision_transformer import VisionTransformer

    cfg = model.cfg
    return VisionTransformer(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        num_classes=cfg.num_classes,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_dim / cfg.embed_dim,
        qkv_bias=cfg.qkv_bias,
        class_token=cfg.pool == "cls",
        global_pool="token" if cfg.pool == "cls" else "avg",
        pos_embed="none",
        drop_rate=cfg.dropout,
        attn_drop_rate=cfg.attn_dropout,
        drop_path_rate=cfg.drop_path,
    )


def autocast(device: str, bf16: bool) -> contextlib.AbstractContextManager:
    """``torch.autocast(device, bfloat16)`` when ``bf16``, else a no-op context."""
    if not bf16:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)


def make_train_step(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, bf16: bool = False, lr: float = 1e-4
) -> Callable[[], None]:
    """A closure running one training step of ``model`` on the fixed batch ``(x, y)`` with its own AdamW.

    Args:
        model: the network, already on the device of ``x`` and in train mode.
        x: ``(B, C, H, W)`` input batch.
        y: ``(B,)`` class indices.
        bf16: run forward and loss under bf16 autocast (parameters and optimizer stay float32).
        lr: AdamW learning rate (irrelevant for speed, small to keep values tame over many repeats).

    Returns:
        ``step()``: forward + cross-entropy + backward + ``AdamW.step`` + ``zero_grad(set_to_none=True)``.
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    dev = x.device.type

    def step() -> None:
        with autocast(dev, bf16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def make_forward(model: nn.Module, x: torch.Tensor, *, bf16: bool = False) -> Callable[[], None]:
    """A closure running ``model(x)`` under ``torch.inference_mode`` (and bf16 autocast when asked)."""
    dev = x.device.type

    def forward() -> None:
        with torch.inference_mode(), autocast(dev, bf16):
            model(x)

    return forward


def batch_for(size: BenchSize, batch: int, device: str, *, in_chans: int = 1, num_classes: int = 4, seed: int = 0):
    """A seeded random ``(x, y)`` batch: ``(batch, in_chans, S, S)`` standard-normal images and class indices."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, in_chans, size.img_size, size.img_size, generator=g)
    y = torch.randint(0, num_classes, (batch,), generator=g)
    return x.to(device), y.to(device)
