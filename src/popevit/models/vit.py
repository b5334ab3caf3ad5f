"""The one Vision Transformer backbone of popevit; the positional encoding is the only thing that varies.

ViT (Dosovitskiy et al. 2021, arXiv:2010.11929, Eq. 1-4): a convolutional patch embedding, an optional learned CLS
token, ``depth`` pre-norm blocks ``x = x + Attn(LN(x)); x = x + MLP(LN(x))``, a final LayerNorm, pooling (the CLS
token, or the mean of the patch tokens) and a linear head. Stochastic depth (Huang et al. 2016, arXiv:1603.09382)
and dropout are optional.

The positional encoding (``popevit.models.pos_enc``) plugs into three hooks: added to the tokens before the first
block, an attention bias, or a q/k transform. The backbone passes the patch grid of the current input to every hook,
so any image size divisible by the patch size runs (fixed codes are recomputed, learned absolute ones resampled).

A CLS token exists iff ``pool == "cls"``; with mean pooling there are no prefix tokens.

``distill=True`` adds DeiT's distillation token (Touvron et al. 2021, arXiv:2012.12877, Sec. 4): one more learned
prefix token (after the CLS token when there is one) with its own linear head, trained to match a teacher. In
training mode the model then returns ``(class_logits, distillation_logits)``; in eval mode their mean, so every
evaluation and explanation path sees one ``(B, K)`` tensor (DeiT's inference rule).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch
from timm.layers import DropPath, Mlp
from torch import Tensor, nn

from popevit.models.attention import Attention
from popevit.models.pos_enc import PositionalEncoding, build_pos_enc
from popevit.models.stem import STEMS


@dataclass(frozen=True)
class ViTConfig:
    """Hyper-parameters of :class:`ViT`; presets live in ``popevit.models.presets``.

    Attributes:
        img_size: reference input side in pixels (learned/fixed position tables are built for it).
        patch_size: square patch side in pixels.
        in_chans: input channels (1 grayscale, 3 RGB).
        num_classes: logits produced by the head.
        embed_dim: token width C.
        depth: number of blocks.
        num_heads: attention heads H.
        mlp_dim: hidden width of the MLPs.
        pool: ``"cls"`` (CLS token, added automatically) or ``"mean"`` (mean of patch tokens, no CLS token).
        pos_enc: registered positional encoding name.
        dropout: dropout in the MLPs, after attention projections and before the head.
        attn_dropout: dropout on attention probabilities.
        drop_path: maximum stochastic-depth rate (linearly increasing over the blocks).
        qkv_bias: bias on the q/k/v projection.
        stem: tokeniser, a key of ``popevit.models.stem.STEMS``: ``"patch"`` (one patchify convolution), ``"conv"``
            (convolutional stem) or ``"res"`` (residual convolutional stem).
        distill: add a distillation token and head (see the module docstring).
        fc_norm: apply the final LayerNorm to the pooled feature instead of to every token before pooling (timm's
            ``fc_norm``, as in BEiT and MAE). With mean pooling, normalising each token first gives a lesion covering
            a few of the patches a share of the pooled feature no larger than its area; pooled first, a token's
            larger activations still count.
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 1
    num_classes: int = 4
    embed_dim: int = 192
    depth: int = 6
    num_heads: int = 3
    mlp_dim: int = 384
    pool: Literal["cls", "mean"] = "cls"
    pos_enc: str = "pope"
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    qkv_bias: bool = True
    stem: Literal["patch", "conv", "res"] = "patch"
    distill: bool = False
    fc_norm: bool = False

    def __post_init__(self) -> None:
        if self.img_size % self.patch_size:
            raise ValueError(
                f"img_size={self.img_size} is not divisible by patch_size={self.patch_size}; "
                f"use e.g. img_size={self.img_size // self.patch_size * self.patch_size}"
            )
        if self.stem not in STEMS:
            raise ValueError(f"stem must be one of {sorted(STEMS)}, got {self.stem!r}")
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {self.pool!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")

    def replace(self, **changes) -> ViTConfig:
        return replace(self, **changes)


class Block(nn.Module):
    """Pre-norm transformer block: ``x + DropPath(Attn(LN(x)))`` then ``x + DropPath(MLP(LN(x)))``."""

    def __init__(self, cfg: ViTConfig, layer: int, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.attn = Attention(
            cfg.embed_dim,
            cfg.num_heads,
            layer=layer,
            qkv_bias=cfg.qkv_bias,
            attn_drop=cfg.attn_dropout,
            proj_drop=cfg.dropout,
        )
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.mlp = Mlp(cfg.embed_dim, hidden_features=cfg.mlp_dim, act_layer=nn.GELU, drop=cfg.dropout)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor, pos_enc: PositionalEncoding, grid: tuple[int, int]) -> Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), pos_enc, grid))  # (B, N, C)
        return x + self.drop_path2(self.mlp(self.norm2(x)))  # (B, N, C)


class ViT(nn.Module):
    """Vision Transformer with a swappable positional encoding.

    Args:
        cfg: the architecture; see :class:`ViTConfig`.

    Attributes:
        num_prefix_tokens: CLS token (``pool="cls"``) + distillation token (``distill``): 0, 1 or 2.
        global_pool: ``"cls"`` or ``"mean"``.
        patch_size: patch side in pixels.
        pos_enc: the :class:`PositionalEncoding` module.
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_size = cfg.patch_size
        self.global_pool: Literal["cls", "mean"] = cfg.pool
        self.num_prefix_tokens = int(cfg.pool == "cls") + int(cfg.distill)
        self.num_classes = cfg.num_classes
        self.embed_dim = cfg.embed_dim

        self.patch_embed: nn.Module = STEMS[cfg.stem](cfg.in_chans, cfg.embed_dim, cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) if cfg.pool == "cls" else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim)) if cfg.distill else None
        self.pos_enc = build_pos_enc(
            cfg.pos_enc,
            embed_dim=cfg.embed_dim,
            num_heads=cfg.num_heads,
            depth=cfg.depth,
            num_prefix_tokens=self.num_prefix_tokens,
            grid=self.grid_size((cfg.img_size, cfg.img_size)),
        )
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]  # linear stochastic depth
        self.blocks = nn.ModuleList(Block(cfg, i, rates[i]) for i in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=1e-6)
        self.head_drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        self.head_dist = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.distill else None
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's default ViT init: truncated-normal linear weights, zero biases, tiny CLS token.
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.dist_token is not None:
            nn.init.trunc_normal_(self.dist_token, std=0.02)

    def grid_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """Patch grid ``(gh, gw)`` of an ``(H, W)`` input; both sides must be multiples of the patch size."""
        h, w = img_size
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(
                f"input size {h}x{w} is not divisible by the patch size {p}; resize or pad to a multiple of {p}"
            )
        return h // p, w // p

    def no_weight_decay(self) -> set[str]:
        """Full parameter names exempt from weight decay: the CLS token and the PE's learned tensors.

        Norm weights and biases (1-D) are left to the optimizer's ``dim < 2`` rule.
        """
        names = {f"pos_enc.{n}" for n in self.pos_enc.no_weight_decay()}
        names |= {n for n in ("cls_token", "dist_token") if getattr(self, n) is not None}
        return names

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer groups in timm's format (for layer-wise lr decay): the stem (patch embedding, prefix tokens and the
        positional encoding, which every block shares), then one group per block; the final norm joins the last block.
        Parameters no group names (the heads) form the top group."""
        return {
            "stem": r"^cls_token|^dist_token|^patch_embed|^pos_enc",
            "blocks": r"^blocks\.(\d+)" if coarse else [(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        }

    def forward_features(self, x: Tensor, mask: Tensor | None = None, mask_token: Tensor | None = None) -> Tensor:
        """``(B, C_in, H, W)`` images -> ``(B, N, C)`` normalised tokens, prefix tokens first.

        ``mask`` (B, P) bool, True = hidden, replaces those patch embeddings with ``mask_token`` (1, 1, C) before
        the positional encoding, as in SimMIM (Xie et al. 2022, arXiv:2111.09886): masked-image pretraining.
        """
        grid = self.grid_size(tuple(x.shape[-2:]))
        # contiguous: a transposed view would keep the whole residual stream in (B, C, P) strides (~5% slower)
        x = self.patch_embed(x).permute(0, 2, 3, 1).flatten(1, 2).contiguous()  # (B, P, C)
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), mask_token.to(x.dtype), x)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.dist_token) if t is not None]
        if prefix:
            x = torch.cat([*prefix, x], dim=1)  # (B, N, C): [CLS], [DIST], patches
        x = self.pos_enc.add_to_tokens(x, grid)
        for blk in self.blocks:
            x = blk(x, self.pos_enc, grid)
        return x if self.cfg.fc_norm else self.norm(x)

    def forward_head(self, x: Tensor) -> Tensor:
        """``(B, N, C)`` tokens -> ``(B, num_classes)`` logits."""
        n0 = self.num_prefix_tokens
        x = x[:, 0] if self.global_pool == "cls" else x[:, n0:].mean(dim=1)  # (B, C)
        return self.head(self.head_drop(self.norm(x) if self.cfg.fc_norm else x))

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """``(B, C_in, H, W)`` float images -> ``(B, num_classes)`` logits.

        With a distillation token: ``(class_logits, distillation_logits)`` in training mode, their mean in eval mode.
        """
        feats = self.forward_features(x)
        logits = self.forward_head(feats)
        if self.head_dist is None:
            return logits
        token = feats[:, self.num_prefix_tokens - 1]  # the DIST token
        dist = self.head_dist(self.head_drop(self.norm(token) if self.cfg.fc_norm else token))  # (B, K)
        return (logits, dist) if self.training else (logits + dist) / 2

    def config_dict(self) -> dict:
        return asdict(self.cfg)
