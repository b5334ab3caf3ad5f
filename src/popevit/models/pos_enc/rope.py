"""2-D rotary position embeddings for ViTs: axial and mixed (Heo et al., ECCV 2024, arXiv:2403.13298).

RoPE (Su et al. 2021, arXiv:2104.09864, Eq. 34) rotates each channel pair ``c`` of q and k by the angle
``phi_c(p)`` of the token's position, so that ``<R(phi(p)) q, R(phi(p')) k>`` depends on positions only through
``phi(p) - phi(p')``. For a patch at ``(x, y)``:

- ``rope_axial`` (RoPE-ViT Eq. 10): half of the pairs use ``phi_c = x * theta_c``, the other half
  ``phi_c = y * theta_c``, with ``theta_c = 100^(-c / (D/4))``, ``c = 0 .. D/4 - 1`` (the paper's base 100);
- ``rope_mixed`` (RoPE-ViT Eq. 11-12): every pair uses ``phi_c = x * f_c^x + y * f_c^y`` with a learned 2-D frequency
  vector per block, head and pair, initialised by timm's ``init_random_2d_freqs`` (magnitudes ``10^(-c / (D/4))``,
  a random direction per head, pairs split between that direction and its perpendicular).

Channel layout is "rotate half": pair ``c`` is channels ``(c, c + D/2)``; timm and RoPE-ViT interleave ``(2c, 2c+1)``,
which is the same operation up to a fixed channel permutation. Prefix (CLS) tokens are not rotated (angle 0).
Real cos/sin only, so ONNX export works.
"""

from __future__ import annotations

import torch
from timm.layers.pos_embed_sincos import init_random_2d_freqs
from torch import Tensor, nn

from popevit.models.pos_enc.base import PositionalEncoding, patch_positions, register_pos_enc


def swap_halves(x: Tensor) -> Tensor:
    """``[x1, x2] -> [x2, x1]`` on the last axis (one copy; the sign of the rotation lives in the sin table)."""
    return x.unflatten(-1, (2, -1)).flip(-2).flatten(-2)


def apply_rotary(x: Tensor, cos: Tensor, sin_signed: Tensor) -> Tensor:
    """Rotate channel pairs ``(c, c + D/2)`` of ``x`` ``(B, H, N, D)``.

    ``x * cos + rotate_half(x) * sin`` with ``rotate_half([x1, x2]) = [-x2, x1]``, written as
    ``x * cos + swap_halves(x) * [-sin, sin]`` to save a pass over ``x``.

    Args:
        x: ``(B, H, N, D)``.
        cos: ``[cos, cos]`` table broadcastable to ``x``.
        sin_signed: ``[-sin, sin]`` table broadcastable to ``x``.
    """
    return x * cos + swap_halves(x) * sin_signed


def rotary_tables(angles: Tensor) -> tuple[Tensor, Tensor]:
    """Angles ``(..., D/2)`` -> ``([cos, cos], [-sin, sin])`` tables ``(..., D)`` for :func:`apply_rotary`."""
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], dim=-1), torch.cat([-sin, sin], dim=-1)


class _RotaryLearned(torch.autograd.Function):
    """Rotate q and k by the same learned angles, with a hand-written backward.

    With learned angles (``rope_mixed``), autograd's backward of ``x * cos + swap(x) * sin`` multiplies and
    batch-reduces four full-size tensors per q and k to reach the tables. Rotation has a closed-form derivative:
    for pair ``c`` with output ``(o1, o2)``, ``d(o1, o2)/d phi = (-o2, o1)``, so
    ``dL/dphi = sum_batch(g2 * o1 - g1 * o2)`` over q and k together, and ``dL/dx`` is the rotation of the incoming
    gradient by ``-phi``. One half-width multiply-add and one batch reduction per tensor instead.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, angles: Tensor) -> tuple[Tensor, Tensor]:
        cos, sin = rotary_tables(angles.to(q.dtype))  # (H, N, D) each
        q_out, k_out = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        ctx.save_for_backward(q_out, k_out, cos, sin)
        ctx.angles_dtype = angles.dtype
        return q_out, k_out

    @staticmethod
    def backward(ctx, g_q: Tensor, g_k: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        q_out, k_out, cos, sin = ctx.saved_tensors
        grad_angles = None
        if ctx.needs_input_grad[2]:
            h = q_out.shape[-1] // 2
            grad_angles = torch.zeros((*cos.shape[:-1], h), dtype=ctx.angles_dtype, device=cos.device)  # (H, N, D/2)
            for g, o in ((g_q, q_out), (g_k, k_out)):
                t = g[..., h:] * o[..., :h]
                t.addcmul_(g[..., :h], o[..., h:], value=-1.0)  # (B, H, N, D/2)
                grad_angles += t.sum(0).to(ctx.angles_dtype)
        # the inverse rotation: negate the signed sin table
        return apply_rotary(g_q, cos, -sin), apply_rotary(g_k, cos, -sin), grad_angles


def rotate_learned(q: Tensor, k: Tensor, angles: Tensor) -> tuple[Tensor, Tensor]:
    """``apply_rotary`` of q and k ``(B, H, N, D)`` by angles ``(H, N, D/2)`` that carry a gradient (fused backward)."""
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or angles.requires_grad):
        return _RotaryLearned.apply(q, k, angles)
    cos, sin = rotary_tables(angles.to(q.dtype))
    return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


def pad_prefix(angles: Tensor, num_prefix_tokens: int) -> Tensor:
    """Prepend ``num_prefix_tokens`` zero-angle rows on the token axis (-2): prefix tokens stay unrotated."""
    if num_prefix_tokens == 0:
        return angles
    zeros = angles.new_zeros(*angles.shape[:-2], num_prefix_tokens, angles.shape[-1])
    return torch.cat([zeros, angles], dim=-2)


def axial_angles(grid: tuple[int, int], head_dim: int, base: float = 100.0) -> Tensor:
    """RoPE-ViT axial angles: ``(P, D/2)``, first ``D/4`` columns ``x * theta``, last ``D/4`` ``y * theta``."""
    if head_dim % 4:
        raise ValueError(f"2-D RoPE needs a head dim divisible by 4, got {head_dim}; change embed_dim or num_heads")
    theta = base ** -(torch.arange(head_dim // 4, dtype=torch.float32) / (head_dim // 4))  # (D/4,)
    pos = patch_positions(grid)  # (P, 2)
    return torch.cat([pos[:, 0:1] * theta, pos[:, 1:2] * theta], dim=-1)  # (P, D/2)


@register_pos_enc("rope_axial")
class RoPEAxial(PositionalEncoding):
    """2-D axial RoPE (RoPE-ViT, arXiv:2403.13298, Eq. 10): fixed x/y frequencies, CLS not rotated."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        cos, sin = self._tables(self.grid)
        self.register_buffer("cos", cos, persistent=False)  # (N, D)
        self.register_buffer("sin", sin, persistent=False)  # (N, D), signed [-sin, sin]

    def _tables(self, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        return rotary_tables(pad_prefix(axial_angles(grid, self.head_dim), self.num_prefix_tokens))  # (N, D) each

    def transform_qk(self, q: Tensor, k: Tensor, layer: int, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        if tuple(grid) == self.grid:
            cos, sin = self.cos, self.sin
        else:
            cos, sin = (t.to(q.device) for t in self._tables(grid))
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)


@register_pos_enc("rope_mixed")
class RoPEMixed(PositionalEncoding):
    """RoPE-Mixed (RoPE-ViT, arXiv:2403.13298, Eq. 11-12): learned 2-D frequencies per block, head and pair."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if self.head_dim % 4:
            raise ValueError(f"rope_mixed needs a head dim divisible by 4, got {self.head_dim}")
        f = init_random_2d_freqs(self.head_dim, self.depth, self.num_heads, temperature=10.0)  # (2, depth, H, D/2)
        self.freqs = nn.Parameter(f.permute(1, 2, 3, 0).contiguous())  # (depth, H, D/2, 2) = (f^x, f^y)
        self.register_buffer("pos", patch_positions(self.grid), persistent=False)  # (P, 2)

    def transform_qk(self, q: Tensor, k: Tensor, layer: int, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        pos = self.pos if tuple(grid) == self.grid else patch_positions(grid, q.device)  # (P, 2)
        ang = torch.einsum("pt,hct->hpc", pos, self.freqs[layer].float())  # (H, P, D/2)
        return rotate_learned(q, k, pad_prefix(ang, self.num_prefix_tokens))

    def no_weight_decay(self) -> set[str]:
        return {"freqs"}
