"""Convolutional stem for the ViT: "Early convolutions help transformers see better" (Xiao et al., NeurIPS 2021,
arXiv:2106.14881).

The single patchify convolution (kernel = stride = patch size) is replaced by a stack of 3x3 stride-2
convolutions with BatchNorm and ReLU, whose widths double up to the embedding width, followed by a 1x1 projection.
The output grid is the same as the patchify stem's, so positional encodings, rollout and every other part of the
backbone are unchanged; only the inductive bias of the tokeniser differs.
"""

from __future__ import annotations

from torch import Tensor, nn


class ConvStem(nn.Module):
    """``(B, in_chans, H, W) -> (B, embed_dim, H/p, W/p)`` with log2(p) stride-2 3x3 convolutions.

    Args:
        in_chans: input channels.
        embed_dim: token width C.
        patch_size: total stride p; must be a power of two >= 2.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        n = patch_size.bit_length() - 1
        if patch_size < 2 or 2**n != patch_size:
            raise ValueError(f"the conv stem needs a power-of-two patch size >= 2, got {patch_size}; use stem='patch'")
        widths = [max(8, embed_dim // 2 ** (n - 1 - i)) for i in range(n)]  # ..., C/2, C
        layers: list[nn.Module] = []
        c_in = in_chans
        for c_out in widths:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        layers.append(nn.Conv2d(c_in, embed_dim, kernel_size=1))
        self.proj = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)
