"""2-D relative position bias per head, with CLS entries (Swin / BEiT style).

Swin (Liu et al. 2021, arXiv:2103.14030, Eq. 4): ``Attention = SoftMax(Q K^T / sqrt(d) + B) V`` with
``B[i, j] = B_hat[dy_ij + gh - 1, dx_ij + gw - 1]`` looked up in a learned ``(2gh - 1) x (2gw - 1)`` table per head.
BEiT (Bao et al. 2022, arXiv:2106.08254, Sec. 2.5) adds three learned entries for the CLS token
(CLS->patch, patch->CLS, CLS->CLS); each block has its own table, as in both papers.

Resolution change: the bias keeps meaning "offset (dx, dy)". Offsets seen in training are looked up as they are and
larger ones are clamped to the edge of the table (BEiT instead interpolates the table for fine-tuning, which changes
the meaning of each offset; we want zero-shot extrapolation).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from popevit.models.pos_enc.base import PositionalEncoding, patch_positions, register_pos_enc


def relative_index(grid: tuple[int, int], ref_grid: tuple[int, int], num_prefix_tokens: int) -> Tensor:
    """Table index of every (query, key) pair.

    Args:
        grid: current ``(gh, gw)``.
        ref_grid: the grid the table was built for; offsets beyond it are clamped.
        num_prefix_tokens: prefix tokens in front of the patches.

    Returns:
        ``(N, N)`` long tensor into a table of ``(2 gh0 - 1)(2 gw0 - 1) + 3`` entries.
    """
    gh0, gw0 = ref_grid
    pos = patch_positions(grid).long()  # (P, 2)
    d = pos[:, None, :] - pos[None, :, :]  # (P, P, 2) = query - key
    dx = d[..., 0].clamp(-(gw0 - 1), gw0 - 1) + gw0 - 1
    dy = d[..., 1].clamp(-(gh0 - 1), gh0 - 1) + gh0 - 1
    patch_idx = dy * (2 * gw0 - 1) + dx  # (P, P)
    t = (2 * gh0 - 1) * (2 * gw0 - 1)
    n0, p = num_prefix_tokens, patch_idx.shape[0]
    idx = torch.empty(n0 + p, n0 + p, dtype=torch.long)  # (N, N)
    idx[n0:, n0:] = patch_idx
    idx[:n0, n0:] = t  # CLS query -> patch key
    idx[n0:, :n0] = t + 1  # patch query -> CLS key
    idx[:n0, :n0] = t + 2  # CLS -> CLS
    return idx


@register_pos_enc("rel_bias")
class RelativePositionBias(PositionalEncoding):
    """Learned 2-D relative position bias per block and head (Swin Eq. 4 with BEiT's CLS entries)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        gh0, gw0 = self.grid
        size = (2 * gh0 - 1) * (2 * gw0 - 1) + 3
        self.bias_table = nn.Parameter(torch.zeros(self.depth, self.num_heads, size))  # (depth, H, T + 3)
        nn.init.trunc_normal_(self.bias_table, std=0.02)
        self.register_buffer("index", relative_index(self.grid, self.grid, self.num_prefix_tokens), persistent=False)

    def attn_bias(self, layer: int, grid: tuple[int, int]) -> Tensor:
        if tuple(grid) == self.grid:
            idx = self.index
        else:
            idx = relative_index(grid, self.grid, self.num_prefix_tokens).to(self.bias_table.device)
        return self.bias_table[layer][:, idx]  # (H, N, N)

    def no_weight_decay(self) -> set[str]:
        return {"bias_table"}
