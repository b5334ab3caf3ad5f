"""Absolute positional encodings: none, learnable (ViT) and fixed 2-D sinusoidal (MAE).

- ``none``: no position at all; the transformer is then permutation-equivariant over patches.
- ``learnable``: one learned vector per token position (Dosovitskiy et al. 2021, arXiv:2010.11929, Eq. 1,
  ``z_0 = [x_cls; x_p E] + E_pos``), bicubically resampled when the patch grid changes (ViT paper, Sec. 3.2).
- ``sincos``: the fixed 2-D sine-cosine table of MAE (He et al. 2022, arXiv:2111.06377), i.e. the 1-D code of
  Vaswani et al. 2017 (arXiv:1706.03762, Sec. 3.5), ``PE(p, 2i) = sin(p / 10000^(2i/d))``, ``PE(p, 2i+1) = cos(...)``,
  applied to y on the first half of the channels and to x on the second half. The CLS token gets no fixed code:
  it learns its own through the backbone's learned CLS embedding.
"""

from __future__ import annotations

import torch
from timm.layers import resample_abs_pos_embed
from torch import Tensor, nn

from popevit.models.pos_enc.base import PositionalEncoding, patch_positions, register_pos_enc


@register_pos_enc("none")
class NoPosEnc(PositionalEncoding):
    """No positional information (the control arm of the study)."""


@register_pos_enc("learnable")
class LearnablePosEnc(PositionalEncoding):
    """Learned absolute position embedding (ViT, arXiv:2010.11929, Eq. 1), resampled to new grids."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        n = self.num_prefix_tokens + self.grid[0] * self.grid[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, n, self.embed_dim))  # (1, N, C)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def add_to_tokens(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        pos = self.pos_embed
        if tuple(grid) != self.grid:
            pos = resample_abs_pos_embed(
                pos, new_size=list(grid), old_size=list(self.grid), num_prefix_tokens=self.num_prefix_tokens
            )  # (1, N', C)
        return x + pos.to(x.dtype)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}


def sincos_2d(grid: tuple[int, int], dim: int, temperature: float = 10000.0) -> Tensor:
    """MAE's fixed 2-D sine-cosine table.

    Args:
        grid: ``(gh, gw)``.
        dim: embedding width C, a multiple of 4.
        temperature: the 10000 of Vaswani et al.

    Returns:
        ``(P, C)`` table: channels ``[sin y, cos y, sin x, cos x]``, each ``C/4`` wide.
    """
    if dim % 4:
        raise ValueError(f"sincos needs an embed_dim divisible by 4, got {dim}; pick another width")
    omega = temperature ** -(torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (C/4,)
    pos = patch_positions(grid).double()  # (P, 2) = (x, y)
    ang_y = pos[:, 1:2] * omega  # (P, C/4)
    ang_x = pos[:, 0:1] * omega  # (P, C/4)
    return torch.cat([ang_y.sin(), ang_y.cos(), ang_x.sin(), ang_x.cos()], dim=-1).float()  # (P, C)


@register_pos_enc("sincos")
class SinCosPosEnc(PositionalEncoding):
    """Fixed 2-D sinusoidal absolute encoding (MAE, arXiv:2111.06377); no trainable parameters."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.register_buffer("table", sincos_2d(self.grid, self.embed_dim), persistent=False)  # (P, C)

    def add_to_tokens(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        table = self.table if tuple(grid) == self.grid else sincos_2d(grid, self.embed_dim).to(x.device)
        n0 = self.num_prefix_tokens
        return torch.cat([x[:, :n0], x[:, n0:] + table.to(x.dtype)], dim=1)  # (B, N, C)
