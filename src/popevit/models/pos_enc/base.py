"""The positional-encoding interface: three hook points, each a no-op by default.

A positional encoding (PE) acts on a ViT in at most three places (Dosovitskiy et al. 2021, arXiv:2010.11929 for the
first; Shaw et al. 2018, arXiv:1803.02155 for the second; Su et al. 2021, arXiv:2104.09864 for the third):

1. :meth:`PositionalEncoding.add_to_tokens` adds an absolute code to the token sequence before the first block;
2. :meth:`PositionalEncoding.attn_bias` returns an additive per-head bias on the attention logits;
3. :meth:`PositionalEncoding.transform_qk` rewrites queries and keys (RoPE rotates them, PoPE maps them to polar form).

A PE also declares how wide it makes q/k (:attr:`qk_expansion`, 2 for PoPE's Cartesian form), the softmax scale
(:meth:`attn_scale`) and which of its tensors escape weight decay (:meth:`no_weight_decay`). The backbone calls the
hooks with the patch grid ``(gh, gw)`` of the current input, so every PE follows a change of resolution.

Token order everywhere: ``num_prefix_tokens`` prefix (CLS) tokens first, then the ``gh * gw`` patches row-major
(index ``r * gw + c``); a patch's position is ``(x, y) = (c, r)`` in patch units.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from popevit.registry import Registry

POS_ENCS: Registry[type[PositionalEncoding]] = Registry("positional encoding")


def register_pos_enc(name: str):
    """Class decorator: register a :class:`PositionalEncoding` subclass under ``name`` (duplicates raise)."""

    def decorator(cls: type[PositionalEncoding]) -> type[PositionalEncoding]:
        POS_ENCS.add(name, cls)
        cls.name = name
        return cls

    return decorator


def patch_positions(grid: tuple[int, int], device: torch.device | None = None) -> Tensor:
    """Integer patch coordinates of a grid, row-major.

    Args:
        grid: ``(gh, gw)``.
        device: where to build them.

    Returns:
        ``(P, 2)`` float tensor of ``(x, y)`` = (column, row) per patch, ``P = gh * gw``.
    """
    gh, gw = grid
    ys, xs = torch.meshgrid(
        torch.arange(gh, device=device, dtype=torch.float32),
        torch.arange(gw, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([xs.flatten(), ys.flatten()], dim=-1)  # (P, 2)


class PositionalEncoding(nn.Module):
    """Base class of every PE; subclasses override only the hooks they need.

    Args:
        embed_dim: token width C.
        num_heads: attention heads H (``embed_dim % num_heads == 0``).
        depth: number of blocks (per-layer PEs keep one parameter slice per block).
        num_prefix_tokens: CLS-like tokens in front of the patches (0 or 1 in popevit).
        grid: the reference patch grid ``(gh, gw)`` of the construction image size; fixed tables for it are cached
            as non-persistent buffers and other grids are computed on the fly.
    """

    name: ClassVar[str] = "?"
    qk_expansion: ClassVar[int] = 1

    def __init__(
        self, *, embed_dim: int, num_heads: int, depth: int, num_prefix_tokens: int, grid: tuple[int, int]
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}; change one of them")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.depth = depth
        self.num_prefix_tokens = num_prefix_tokens
        self.grid = (int(grid[0]), int(grid[1]))

    def add_to_tokens(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        """Absolute-encoding hook: ``x`` is ``(B, N, C)`` with the prefix tokens first; returns the same shape."""
        return x

    def attn_bias(self, layer: int, grid: tuple[int, int]) -> Tensor | None:
        """Relative-encoding hook: an additive logit bias ``(H, N, N)`` for block ``layer``, or ``None``."""
        return None

    def transform_qk(self, q: Tensor, k: Tensor, layer: int, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """Rotary/polar hook: ``q, k`` are ``(B, H, N, D)``; returns ``(B, H, N, D * qk_expansion)`` each."""
        return q, k

    def attn_scale(self) -> float:
        """Softmax temperature passed explicitly to attention (``1/sqrt(D)`` unless a PE says otherwise)."""
        return self.head_dim**-0.5

    def no_weight_decay(self) -> set[str]:
        """Names (relative to this module) of learned tensors that must not be weight-decayed."""
        return set()

    def extra_repr(self) -> str:
        return f"heads={self.num_heads}, head_dim={self.head_dim}, depth={self.depth}, grid={self.grid}"
