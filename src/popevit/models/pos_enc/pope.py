"""2-D Polar Coordinate Position Embeddings: axial PoPE and (new) mixed PoPE.

PoPE (Gopalakrishnan, Csordas, Schmidhuber & Mozer 2025, arXiv:2509.10534) separates "what" from "where": every
one of the D channels of a head becomes a complex number whose magnitude is content only and whose phase is position
only, ``q~_tc = softplus(q_tc) e^{i phi_c(t)}`` and ``k~_sc = softplus(k_sc) e^{i (phi_c(s) + delta_c)}``, and the
attention logit is ``a_ts = Re[q~_t^H k~_s] = sum_c mu^q_tc mu^k_sc cos(phi_c(s) - phi_c(t) + delta_c)``.
``delta`` is a learned key phase bias per block, head and channel, initialised to 0 and clamped to ``[-2 pi, 0]`` as
in the paper and in lucidrains' PoPE-pytorch. ``torch.clamp`` has zero gradient at the bound, which would freeze a
``delta`` initialised at 0 (as happens in PoPE-pytorch 0.2.1), so our clamp lets the gradient through wherever it
points back into the range.

We compute ``a_ts`` with real arithmetic (no complex tensors, so ONNX export works) as the dot product of the Cartesian
vectors ``[mu cos phi, mu sin phi]`` of width 2D, and hand those to fused ``scaled_dot_product_attention`` (q/k width
2D, v width D) with the softmax scale passed explicitly (on CPU, where torch has no fused kernel for q/k wider than v,
``popevit.models.attention.attend`` runs the equivalent explicit path, which is faster than SDPA's math fallback). The
scale is ``1/sqrt(D)``: ``a_ts`` is a sum of D terms, one per complex channel, exactly like a standard logit, the
Cartesian width 2D is an implementation detail, and it is PoPE-pytorch's default (``q.shape[-1] ** -0.5`` taken before
the expansion). Measured at initialisation of ``vit_p16_w512_d6`` on 224 px phantoms
(``benchmarks/bench_models.py --pope-scale all``), neither candidate saturates the softmax: logit std over keys 0.63
with ``1/sqrt(D)`` vs 0.44 with ``1/sqrt(2D)`` (none: 0.17), entropy 0.96 vs 0.98 of ``log N``; a short training run
showed no difference (docs/experiments/pope_softmax_scale.md).

Positions in 2-D, for a patch at ``(x, y)``:

- ``pope`` (axial): the D frequencies of a head are split across the axes, ``phi_c = x * theta_c`` for
  ``c < D/2`` and ``phi_c = y * theta_{c - D/2}`` otherwise, ``theta_c = 100^(-c / (D/2))`` (the base of the
  RoPE-ViT axial code, so ``pope`` and ``rope_axial`` span the same band);
- ``pope_mixed`` (new, not published): ``phi_c = x * f_c^x + y * f_c^y`` with a learned 2-D frequency vector per
  block, head and channel, initialised like RoPE-Mixed (arXiv:2403.13298, Eq. 12) with timm's
  ``init_random_2d_freqs`` at D frequencies instead of D/2.

Prefix (CLS) tokens get magnitude only: phase 0 and no ``delta``, so they match every patch by content.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers.pos_embed_sincos import init_random_2d_freqs
from torch import Tensor, nn

from popevit.models.pos_enc.base import PositionalEncoding, patch_positions, register_pos_enc
from popevit.models.pos_enc.rope import pad_prefix

DELTA_MIN, DELTA_MAX = -2.0 * math.pi, 0.0


def axial_phases(grid: tuple[int, int], head_dim: int, base: float = 100.0) -> Tensor:
    """Axial PoPE phases ``(P, D)``: ``x * theta`` on the first ``D/2`` channels, ``y * theta`` on the rest."""
    if head_dim % 2:
        raise ValueError(f"2-D PoPE needs an even head dim, got {head_dim}; change embed_dim or num_heads")
    theta = base ** -(torch.arange(head_dim // 2, dtype=torch.float32) / (head_dim // 2))  # (D/2,)
    pos = patch_positions(grid)  # (P, 2)
    return torch.cat([pos[:, 0:1] * theta, pos[:, 1:2] * theta], dim=-1)  # (P, D)


class _ClampInward(torch.autograd.Function):
    """``clamp`` whose gradient also flows at and beyond the bounds when it points back inside.

    ``torch.clamp`` has zero gradient at its bounds, so a ``delta`` initialised at the bound 0 would never move.
    """

    @staticmethod
    def forward(ctx, x: Tensor, lo: float, hi: float) -> Tensor:
        ctx.save_for_backward(x)
        ctx.lo, ctx.hi = lo, hi
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        # gradient descent moves x by -grad: inward at the top bound means grad > 0, at the bottom grad < 0
        keep = ((x > ctx.lo) & (x < ctx.hi)) | ((x >= ctx.hi) & (grad > 0)) | ((x <= ctx.lo) & (grad < 0))
        return torch.where(keep, grad, torch.zeros_like(grad)), None, None


def clamp_inward(x: Tensor, lo: float, hi: float) -> Tensor:
    """``x.clamp(lo, hi)`` in value; the gradient passes inside the range and where it points back into it."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _ClampInward.apply(x, lo, hi)
    return x.clamp(lo, hi)  # inference / export: a plain clamp


class _PolarToCartesian(torch.autograd.Function):
    """``[mu cos phi, mu sin phi]`` with ``mu = softplus(x)``, with a hand-written backward.

    Autograd's version of the two-op graph spends most of PoPE's extra time on CPU in ``softplus_backward`` (scalar
    code), a strided sum over the (cos, sin) axis and a broadcast multiply kept alive for it. Here the backward is
    ``dx = sigmoid(x) * (g_cos * cos + g_sin * sin)`` (two fused multiply-adds on contiguous halves) and, only when
    the table needs a gradient (PoPE's keys, through ``delta``), ``dtable = sum over broadcast dims of g * mu``.
    """

    @staticmethod
    def forward(ctx, x: Tensor, cos_sin: Tensor) -> Tensor:
        mu = F.softplus(x)  # (B, H, N, D)
        out = mu.unsqueeze(-2) * cos_sin  # (B, H, N, 2, D)
        ctx.save_for_backward(x, mu if ctx.needs_input_grad[1] else None, cos_sin)
        return out.flatten(-2)  # (B, H, N, 2D)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        x, mu, cos_sin = ctx.saved_tensors
        g = grad.unflatten(-1, (2, x.shape[-1]))  # (B, H, N, 2, D)
        g_cos, g_sin = g.unbind(-2)
        cos, sin = cos_sin.unbind(-2)
        grad_x = grad_table = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.addcmul(g_cos * cos, g_sin, sin).mul_(torch.sigmoid(x))  # (B, H, N, D)
        if ctx.needs_input_grad[1]:
            grad_table = (g * mu.unsqueeze(-2)).sum_to_size(cos_sin.shape)  # batch reduction for delta
        return grad_x, grad_table


def polar_to_cartesian(x: Tensor, cos_sin: Tensor) -> Tensor:
    """Content ``(B, H, N, D)`` and phase table ``(..., N, 2, D)`` (cos, sin) -> ``(B, H, N, 2D)`` Cartesian vectors.

    ``[mu cos phi, mu sin phi]`` with ``mu = softplus(x)``; one broadcast multiply and a free reshape (no ``cat``),
    and a fused backward (:class:`_PolarToCartesian`) when gradients are needed.
    """
    if torch.is_grad_enabled() and (x.requires_grad or cos_sin.requires_grad):
        return _PolarToCartesian.apply(x, cos_sin)
    return (F.softplus(x).unsqueeze(-2) * cos_sin).flatten(-2)  # (B, H, N, 2, D) -> (B, H, N, 2D)


@register_pos_enc("pope")
class PoPE(PositionalEncoding):
    """2-D axial PoPE (arXiv:2509.10534): softplus magnitudes, positional phases, learned key phase bias.

    Args:
        scale: softmax scale, ``"head_dim"`` = ``1/sqrt(D)`` (default, see the module docstring) or ``"cartesian"``
            = ``1/sqrt(2D)``, the width of the real vectors actually multiplied (kept for the ablation).
        **kwargs: see :class:`PositionalEncoding`.
    """

    qk_expansion = 2

    def __init__(self, *, scale: Literal["head_dim", "cartesian"] = "head_dim", **kwargs) -> None:
        super().__init__(**kwargs)
        if scale not in ("head_dim", "cartesian"):
            raise ValueError(f"PoPE scale must be 'head_dim' or 'cartesian', got {scale!r}")
        self.scale = scale
        self.delta = nn.Parameter(torch.zeros(self.depth, self.num_heads, self.head_dim))  # (depth, H, D)
        self.register_buffer("patch_mask", self._patch_mask(self.grid), persistent=False)  # (N, 1)
        self._init_tables()

    def _init_tables(self) -> None:
        phi = pad_prefix(axial_phases(self.grid, self.head_dim), self.num_prefix_tokens)  # (N, D)
        self.register_buffer("phi", phi, persistent=False)
        self.register_buffer("cos_sin", torch.stack([phi.cos(), phi.sin()], dim=-2), persistent=False)  # (N, 2, D)

    def _patch_mask(self, grid: tuple[int, int]) -> Tensor:
        n0, p = self.num_prefix_tokens, grid[0] * grid[1]
        return torch.cat([torch.zeros(n0, 1), torch.ones(p, 1)])  # (N, 1): 0 on prefix tokens

    def phases(self, layer: int, grid: tuple[int, int], device: torch.device) -> tuple[Tensor, Tensor]:
        """Query phases ``(N, D)`` of block ``layer`` (``(H, N, D)`` when learned) and their cos/sin table
        ``(..., N, 2, D)``."""
        if tuple(grid) == self.grid:
            return self.phi, self.cos_sin
        phi = pad_prefix(axial_phases(grid, self.head_dim), self.num_prefix_tokens).to(device)  # (N, D)
        return phi, torch.stack([phi.cos(), phi.sin()], dim=-2)

    def delta_clamped(self, layer: int) -> Tensor:
        """The effective key phase bias of block ``layer``: ``(H, D)``, clamped to ``[-2 pi, 0]``."""
        return clamp_inward(self.delta[layer], DELTA_MIN, DELTA_MAX)

    def transform_qk(self, q: Tensor, k: Tensor, layer: int, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
        phi, cos_sin = self.phases(layer, grid, q.device)  # (N, D), (N, 2, D) or per head (H, ...)
        mask = self.patch_mask if tuple(grid) == self.grid else self._patch_mask(grid).to(q.device)  # (N, 1)
        phi_k = phi + self.delta_clamped(layer).float()[:, None, :] * mask  # (H, N, D)
        cos_sin_k = torch.stack([phi_k.cos(), phi_k.sin()], dim=-2)  # (H, N, 2, D)
        return polar_to_cartesian(q, cos_sin.to(q.dtype)), polar_to_cartesian(k, cos_sin_k.to(k.dtype))

    def attn_scale(self) -> float:
        return self.head_dim**-0.5 if self.scale == "head_dim" else (2 * self.head_dim) ** -0.5

    def no_weight_decay(self) -> set[str]:
        return {"delta"}


@register_pos_enc("pope_mixed")
class PoPEMixed(PoPE):
    """Mixed 2-D PoPE (new): PoPE with learned 2-D frequency vectors per block, head and channel, as in RoPE-Mixed."""

    def _init_tables(self) -> None:
        # timm's RoPE-Mixed init at width 2D gives D frequency vectors per head: magnitudes 10^(-c / (D/2)).
        f = init_random_2d_freqs(2 * self.head_dim, self.depth, self.num_heads, temperature=10.0)  # (2, depth, H, D)
        self.freqs = nn.Parameter(f.permute(1, 2, 3, 0).contiguous())  # (depth, H, D, 2) = (f^x, f^y)
        self.register_buffer("pos", patch_positions(self.grid), persistent=False)  # (P, 2)

    def phases(self, layer: int, grid: tuple[int, int], device: torch.device) -> tuple[Tensor, Tensor]:
        pos = self.pos if tuple(grid) == self.grid else patch_positions(grid, device)  # (P, 2)
        phi = torch.einsum("pt,hct->hpc", pos, self.freqs[layer].float())  # (H, P, D)
        phi = pad_prefix(phi, self.num_prefix_tokens)  # (H, N, D)
        return phi, torch.stack([phi.cos(), phi.sin()], dim=-2)  # (H, N, D), (H, N, 2, D)

    def no_weight_decay(self) -> set[str]:
        return {"delta", "freqs"}
