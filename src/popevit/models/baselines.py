"""Pretrained and CNN baselines in the same registry: DeiT-Small (timm), DeiT-Small with PoPE, ResNet-18 and
ViT-B/16 (torchvision).

- ``deit_small``: DeiT-S (Touvron et al. 2021, arXiv:2012.12877), timm's ``VisionTransformer`` with the
  ``deit_small_patch16_224`` dimensions (patch 16, width 384, 12 blocks, 6 heads), built with
  ``dynamic_img_size=True`` so any multiple of 16 runs (its learned ``pos_embed`` is resampled on the fly).
- ``deit_small_pope``: the same network with every attention layer swapped for popevit's PoPE attention
  (arXiv:2509.10534, see ``pos_enc/pope.py``). The q/k/v and output projections are the very modules timm built,
  so a DeiT-S checkpoint loads into every weight except the new PoPE phase biases ``delta`` (init 0). The learned
  absolute ``pos_embed`` is kept as every other pretrained weight is: the model is "APE + PoPE", like RoPE-ViT's
  ``rope_mixed_ape`` variants (arXiv:2403.13298, Sec. 4), not a pure-PoPE ViT.
- ``resnet18``: torchvision ResNet-18 (He et al. 2016, arXiv:1512.03385), stem rebuilt for 1-channel input.
- ``vit_b16``: torchvision ViT-B/16 (arXiv:2010.11929); ``forward`` resamples its position table when the input
  size differs from the construction size. Use ``freeze_backbone=True`` for the head-only (linear-probe) option.
"""

from __future__ import annotations

import math

import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.layers.attention import Attention as TimmAttention
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torchvision.models import ResNet18_Weights, ViT_B_16_Weights
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViTBase

from popevit.models.attention import Attention
from popevit.models.pos_enc import build_pos_enc
from popevit.models.spec import ModelSpec, register_model, reject_options

DEIT_SMALL = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)


def _check_common(name: str, pos_enc: str | None, own_pos_enc: str | None, patch_size: int | None, patch: int) -> None:
    if pos_enc is not None and pos_enc != own_pos_enc:
        hint = f"it always uses {own_pos_enc!r}" if own_pos_enc else "it has no positional encoding"
        raise ValueError(
            f"model {name!r} does not support pos_enc={pos_enc!r} ({hint}); vary the PE with a vit_* preset instead"
        )
    if patch_size not in (None, patch):
        raise ValueError(f"model {name!r} does not support patch_size={patch_size} (its weights use patch {patch})")


# ------------------------------------------------------------------------------------------------------- DeiT


class DeiT(VisionTransformer):
    """timm ``VisionTransformer`` with DeiT-S dimensions; ``no_weight_decay`` lists only names that exist."""

    def no_weight_decay(self) -> set[str]:
        """Full names of the position table and the CLS token (norms/biases: the optimizer's ``dim < 2`` rule)."""
        names = dict(self.named_parameters())
        return {n for n in super().no_weight_decay() if n in names}


class TimmPoPEAttention(Attention):
    """popevit PoPE attention in place of a timm ``Attention``, reusing its q/k/v and output projections.

    Args:
        old: the timm attention being replaced (its ``qkv``, ``proj`` and dropouts are taken over).
        num_prefix_tokens: prefix tokens of the host model.
        grid: reference patch grid ``(gh, gw)``.
    """

    def __init__(self, old: TimmAttention, num_prefix_tokens: int, grid: tuple[int, int]) -> None:
        dim = old.qkv.in_features
        super().__init__(dim, old.num_heads, layer=0, attn_drop=old.attn_drop.p)
        self.qkv, self.proj, self.proj_drop = old.qkv, old.proj, old.proj_drop
        self.pos_enc = build_pos_enc(
            "pope", embed_dim=dim, num_heads=old.num_heads, depth=1, num_prefix_tokens=num_prefix_tokens, grid=grid
        )
        self.grid = grid  # set by DeiTPoPE.forward_features for each input

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("PoPE attention in deit_small_pope takes no attention mask")
        return super().forward(x, self.pos_enc, self.grid)


class DeiTPoPE(DeiT):
    """DeiT-S with PoPE attention in every block (all other modules are timm's)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        grid = tuple(self.patch_embed.grid_size)
        for blk in self.blocks:
            blk.attn = TimmPoPEAttention(blk.attn, self.num_prefix_tokens, grid)

    def forward_features(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        p = self.patch_embed.patch_size
        grid = (x.shape[-2] // p[0], x.shape[-1] // p[1])
        for blk in self.blocks:
            blk.attn.grid = grid
        return super().forward_features(x, attn_mask=attn_mask, is_causal=is_causal)

    def no_weight_decay(self) -> set[str]:
        deltas = {f"blocks.{i}.attn.pos_enc.delta" for i in range(len(self.blocks))}
        return super().no_weight_decay() | deltas


def _build_deit(cls: type[DeiT], own_pos_enc: str):
    def build(*, name, num_classes, in_chans, img_size, pos_enc, patch_size, dropout, attn_dropout, drop_path, pool):
        _check_common(name, pos_enc, own_pos_enc, patch_size, 16)
        if pool not in (None, "cls", "mean"):
            raise ValueError(f"model {name!r}: pool must be 'cls' or 'mean', got {pool!r}")
        return cls(
            **DEIT_SMALL,
            img_size=img_size,
            in_chans=in_chans,
            num_classes=num_classes,
            global_pool="avg" if pool == "mean" else "token",
            dynamic_img_size=True,
            drop_rate=dropout,
            proj_drop_rate=dropout,
            attn_drop_rate=attn_dropout,
            drop_path_rate=drop_path,
        )

    return build


def _adapt_deit(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    pe = state.get("pos_embed")
    if pe is not None and pe.shape != model.pos_embed.shape:
        n0 = model.num_prefix_tokens
        old = math.isqrt(pe.shape[1] - n0)
        state["pos_embed"] = resample_abs_pos_embed(
            pe, new_size=list(model.patch_embed.grid_size), old_size=[old, old], num_prefix_tokens=n0
        )
    return state


def _deit_hub() -> dict[str, Tensor]:
    return timm.create_model("deit_small_patch16_224.fb_in1k", pretrained=True).state_dict()


# ----------------------------------------------------------------------------------------------------- ResNet


class ResNet18(ResNet):
    """torchvision ResNet-18 with an ``in_chans`` stem; no position tables, so nothing escapes weight decay."""

    def __init__(self, num_classes: int, in_chans: int) -> None:
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        if in_chans != 3:
            self.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
            nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")

    def no_weight_decay(self) -> set[str]:
        return set()


def _build_resnet18(
    *, name, num_classes, in_chans, img_size, pos_enc, patch_size, dropout, attn_dropout, drop_path, pool
):
    _check_common(name, pos_enc, None, None, 0)
    reject_options(
        name, patch_size=patch_size, dropout=dropout, attn_dropout=attn_dropout, drop_path=drop_path, pool=pool
    )
    return ResNet18(num_classes, in_chans)


def _resnet18_hub() -> dict[str, Tensor]:
    return ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)


# ---------------------------------------------------------------------------------------------------- ViT-B/16


VIT_B16 = dict(patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072)


class TorchvisionViT(TorchvisionViTBase):
    """torchvision ``VisionTransformer`` with an ``in_chans`` stem and an input-size-agnostic ``forward``.

    Args:
        img_size: construction size (the position table's grid).
        num_classes: logits.
        in_chans: input channels.
        dropout: torchvision's ``dropout`` (MLPs and after embedding).
        attn_dropout: torchvision's ``attention_dropout``.
        **dims: ``patch_size``, ``num_layers``, ``num_heads``, ``hidden_dim``, ``mlp_dim`` (ViT-B/16 by default).
    """

    def __init__(
        self, *, img_size: int, num_classes: int, in_chans: int, dropout: float = 0.0, attn_dropout: float = 0.0, **dims
    ) -> None:
        dims = {**VIT_B16, **dims}
        super().__init__(
            image_size=img_size, dropout=dropout, attention_dropout=attn_dropout, num_classes=num_classes, **dims
        )
        if in_chans != 3:
            p, c = dims["patch_size"], dims["hidden_dim"]
            self.conv_proj = nn.Conv2d(in_chans, c, kernel_size=p, stride=p)
            nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / (in_chans * p * p)))
            nn.init.zeros_(self.conv_proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, H, W)`` -> ``(B, num_classes)``; H and W any multiples of the patch size."""
        B, _, h, w = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"input size {h}x{w} is not divisible by the patch size {p}")
        x = self.conv_proj(x).flatten(2).transpose(1, 2)  # (B, P, C)
        x = torch.cat([self.class_token.expand(B, -1, -1), x], dim=1)  # (B, N, C)
        pos = self.encoder.pos_embedding  # (1, N0, C)
        if pos.shape[1] != x.shape[1]:
            g0 = self.image_size // p
            pos = resample_abs_pos_embed(pos, new_size=[h // p, w // p], old_size=[g0, g0], num_prefix_tokens=1)
        x = self.encoder.ln(self.encoder.layers(self.encoder.dropout(x + pos)))
        return self.heads(x[:, 0])

    def no_weight_decay(self) -> set[str]:
        return {"class_token", "encoder.pos_embedding"}


def _build_vit_b16(
    *, name, num_classes, in_chans, img_size, pos_enc, patch_size, dropout, attn_dropout, drop_path, pool
):
    _check_common(name, pos_enc, "learnable", patch_size, 16)
    reject_options(name, drop_path=drop_path)
    if pool not in (None, "cls"):
        raise ValueError(f"model {name!r} does not support pool={pool!r}; torchvision's ViT-B/16 reads the CLS token")
    if img_size % 16:
        raise ValueError(f"model {name!r} needs img_size divisible by 16, got {img_size}")
    return TorchvisionViT(
        img_size=img_size, num_classes=num_classes, in_chans=in_chans, dropout=dropout, attn_dropout=attn_dropout
    )


def _adapt_vit_b16(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    key = "encoder.pos_embedding"
    pe = state.get(key)
    if pe is not None and pe.shape != model.encoder.pos_embedding.shape:
        old = math.isqrt(pe.shape[1] - 1)
        g = model.image_size // model.patch_size
        state[key] = resample_abs_pos_embed(pe, new_size=[g, g], old_size=[old, old], num_prefix_tokens=1)
    return state


def _vit_b16_hub() -> dict[str, Tensor]:
    return ViT_B_16_Weights.IMAGENET1K_V1.get_state_dict(progress=False)


register_model(
    "deit_small",
    ModelSpec(
        build=_build_deit(DeiT, "learnable"),
        is_vit=False,
        head="head",
        stem="patch_embed.proj.weight",
        hub=_deit_hub,
        adapt_state=_adapt_deit,
        description="timm DeiT-Small/16 (22M), learned absolute PE",
    ),
)
register_model(
    "deit_small_pope",
    ModelSpec(
        build=_build_deit(DeiTPoPE, "pope"),
        is_vit=False,
        head="head",
        stem="patch_embed.proj.weight",
        hub=_deit_hub,
        adapt_state=_adapt_deit,
        fresh=lambda key: ".attn.pos_enc." in key,
        description="timm DeiT-Small/16 with PoPE attention (APE kept), loads DeiT-S weights",
    ),
)
register_model(
    "resnet18",
    ModelSpec(
        build=_build_resnet18,
        is_vit=False,
        head="fc",
        stem="conv1.weight",
        hub=_resnet18_hub,
        description="torchvision ResNet-18 (11M)",
    ),
)
register_model(
    "vit_b16",
    ModelSpec(
        build=_build_vit_b16,
        is_vit=False,
        head="heads",
        stem="conv_proj.weight",
        hub=_vit_b16_hub,
        adapt_state=_adapt_vit_b16,
        description="torchvision ViT-B/16 (86M), learned absolute PE",
    ),
)
