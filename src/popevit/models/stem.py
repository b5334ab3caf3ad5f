"""Tokenisers ("stems") of the popevit ViT: ``(B, in_chans, H, W) -> (B, embed_dim, H/p, W/p)``.

Every stem produces the same token grid, so positional encodings, rollout and the rest of the backbone are
unchanged; only the inductive bias in front of the transformer differs. ``STEMS`` maps ``model.stem`` to a builder:

- ``patch``: one patchify convolution, kernel = stride = p (Dosovitskiy et al. 2021, arXiv:2010.11929).
- ``conv``: "Early convolutions help transformers see better" (Xiao et al., NeurIPS 2021, arXiv:2106.14881): log2(p)
  3x3 stride-2 convolutions with BatchNorm and ReLU, widths doubling up to the token width, then a 1x1 projection.
  35 M of ``vit_p16_w192_d6``'s 148 M multiply-accumulates per 128-px image (Xiao et al. size it to about one block).
- ``res``: a residual convolutional stem, the hybrid input of Dosovitskiy et al. (section 3.1) at ResNet's stage
  widths: a 3x3 stride-2 convolution to 32 channels, then one torchvision ResNet ``BasicBlock`` per further halving
  of the resolution (widths 64, 128, ... capped at the token width, the last one the token width), then a 1x1
  projection. At 128 px, patch 16 and width 192 it costs a little more than the six transformer blocks of
  ``vit_p16_w192_d6`` behind it (158 M of 271 M multiply-accumulates per image; ``scripts/macs.py``,
  docs/experiments/budget_30min.md).
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise

from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock


def _halvings(patch_size: int, stem: str) -> int:
    n = patch_size.bit_length() - 1
    if patch_size < 2 or 2**n != patch_size:
        raise ValueError(f"the {stem} stem needs a power-of-two patch size >= 2, got {patch_size}; use stem='patch'")
    return n


class ConvStem(nn.Module):
    """``(B, in_chans, H, W) -> (B, embed_dim, H/p, W/p)`` with log2(p) stride-2 3x3 convolutions.

    Args:
        in_chans: input channels.
        embed_dim: token width C.
        patch_size: total stride p; must be a power of two >= 2.
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        n = _halvings(patch_size, "conv")
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


class ResStem(nn.Module):
    """``(B, in_chans, H, W) -> (B, embed_dim, H/p, W/p)``: a stride-2 convolution, then log2(p) - 1 residual blocks.

    Args:
        in_chans: input channels.
        embed_dim: token width C.
        patch_size: total stride p; must be a power of two >= 2.
        base_width: channels after the first convolution (ResNet's stage widths start at 64 after stride 4).
    """

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, base_width: int = 32) -> None:
        super().__init__()
        n = _halvings(patch_size, "res")
        widths = [min(embed_dim, base_width * 2**i) for i in range(n - 1)] + [embed_dim]  # 32, 64, 128, ..., C
        layers: list[nn.Module] = [
            nn.Conv2d(in_chans, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        for c_in, c_out in pairwise(widths):
            shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=2, bias=False), nn.BatchNorm2d(c_out))
            layers.append(BasicBlock(c_in, c_out, stride=2, downsample=shortcut))
        layers.append(nn.Conv2d(widths[-1], embed_dim, kernel_size=1))
        self.proj = nn.Sequential(*layers)
        for m in self.modules():  # ResNet's initialisation (He et al. 2015) for its own blocks
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


def _patchify(in_chans: int, embed_dim: int, patch_size: int) -> nn.Module:
    # a bare Conv2d, so that the state-dict key stays ``patch_embed.weight`` (timm's ViT stem adaptation rules)
    return nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)


STEMS: dict[str, Callable[[int, int, int], nn.Module]] = {"patch": _patchify, "conv": ConvStem, "res": ResStem}
"""``model.stem`` name -> ``builder(in_chans, embed_dim, patch_size)``."""
