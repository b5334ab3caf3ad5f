"""Multi-head self-attention with a fused and an explicit path, and attention capture for explanations.

``softmax(Q K^T * scale + bias) V`` (Vaswani et al. 2017, arXiv:1706.03762, Eq. 1). The fused path calls
``F.scaled_dot_product_attention`` with the scale always passed explicitly, because PoPE's q/k are twice as wide as v.
The explicit path computes the same thing step by step and hands the softmax probabilities, not detached, to a
recorder, so attention rollout (Abnar & Zuidema 2020, arXiv:2005.00928) and gradient rollout (Chefer et al. 2021,
arXiv:2012.09838) can use them.

:func:`capture_attention` switches every attention layer of a model to the explicit path for the duration of a
``with`` block. It understands our :class:`Attention` (popevit ViTs and ``deit_small_pope``), timm's ``Attention``
(``deit_small``) and ``nn.MultiheadAttention`` (torchvision ``vit_b16``, per-head weights, not averaged).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from popevit.models.pos_enc import PositionalEncoding

Recorder = Callable[[Tensor], None]


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    scale: float,
    bias: Tensor | None = None,
    dropout_p: float = 0.0,
    record: Recorder | None = None,
) -> Tensor:
    """Scaled dot-product attention: fused SDPA unless probabilities are recorded or (CPU) q/k are wider than v.

    Args:
        q: ``(B, H, N, Dq)`` queries.
        k: ``(B, H, N, Dq)`` keys (``Dq = D`` or ``2D`` for PoPE).
        v: ``(B, H, N, D)`` values.
        scale: softmax temperature multiplying the logits.
        bias: additive logit bias broadcastable to ``(B, H, N, N)``, or ``None``.
        dropout_p: attention dropout probability (pass 0 in eval mode).
        record: when given, the explicit path runs and ``record(probs)`` receives the ``(B, H, N, N)`` softmax
            probabilities before dropout, still attached to the graph.

    Returns:
        ``(B, H, N, D)`` attention output.
    """
    if bias is not None:
        bias = bias.to(q.dtype)
    # torch has no fused CPU kernel for q/k wider than v (PoPE): SDPA would fall back to its math path, which is
    # ~15% slower than the explicit path below at 224-px sizes (benchmarks/bench_models.py), so use ours there.
    fused = record is None and not (q.device.type == "cpu" and q.shape[-1] != v.shape[-1])
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)
    # 3-D batched GEMMs on (B*H, N, .) views: the scale rides in baddbmm's alpha (no pass over the N x N logits)
    # and k^T stays a strided view (4-D matmul made it contiguous, forward and backward): ~7% of a 224-px PoPE step.
    B, H, N, Dq = q.shape
    logits = torch.baddbmm(
        q.new_zeros(()), q.reshape(B * H, N, Dq), k.reshape(B * H, N, Dq).transpose(1, 2), beta=0.0, alpha=scale
    ).view(B, H, N, N)
    if bias is not None:
        logits = logits + bias
    probs = logits.softmax(dim=-1)  # (B, H, N, N)
    if record is not None:
        record(probs)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return probs @ v  # (B, H, N, D)


class Attention(nn.Module):
    """Pre-projection multi-head self-attention whose positional behaviour comes from a :class:`PositionalEncoding`.

    Args:
        dim: token width C.
        num_heads: heads H.
        layer: index of the block, used to pick per-block PE parameters.
        qkv_bias: bias on the fused q/k/v projection.
        attn_drop: dropout on the attention probabilities.
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        layer: int = 0,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.layer = layer
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.record: Recorder | None = None  # set by capture_attention: forces the explicit path

    def forward(self, x: Tensor, pos_enc: PositionalEncoding, grid: tuple[int, int]) -> Tensor:
        """Attend over ``x`` ``(B, N, C)`` with positions from ``pos_enc`` on patch grid ``grid``; returns (B, N, C)."""
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = pos_enc.transform_qk(q, k, self.layer, grid)  # each (B, H, N, D * qk_expansion)
        bias = pos_enc.attn_bias(self.layer, grid)  # (H, N, N) or None
        x = attend(
            q,
            k,
            v,
            scale=pos_enc.attn_scale(),
            bias=None if bias is None else bias.unsqueeze(0),
            dropout_p=self.attn_drop if self.training else 0.0,
            record=self.record,
        )  # (B, H, N, D)
        x = x.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(x))


@dataclass
class AttentionRecord:
    """What :func:`capture_attention` collects during the last forward pass of the model.

    Attributes:
        attn: one ``(B, H, N, N)`` softmax-probability tensor per block, in block order, attached to the graph.
        num_prefix_tokens: CLS-like tokens before the patches (N = num_prefix_tokens + gh * gw).
        grid: patch grid ``(gh, gw)`` of the last input.
        pool: how the classifier reads the tokens: ``"cls"`` (first token) or ``"mean"`` (mean of the patches).
    """

    attn: list[Tensor] = field(default_factory=list)
    num_prefix_tokens: int = 0
    grid: tuple[int, int] = (0, 0)
    pool: Literal["cls", "mean"] = "cls"


def _readout(model: nn.Module) -> tuple[int, Literal["cls", "mean"], int]:
    """``(num_prefix_tokens, pool, patch_size)`` of a popevit ViT, a timm ViT or a torchvision ViT."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT
    from torchvision.models.vision_transformer import VisionTransformer as TvViT

    if isinstance(model, TimmViT):
        pool = "cls" if model.global_pool == "token" else "mean"
        return model.num_prefix_tokens, pool, int(model.patch_embed.patch_size[0])
    if isinstance(model, TvViT):
        return 1, "cls", int(model.patch_size)
    if hasattr(model, "num_prefix_tokens") and hasattr(model, "global_pool") and hasattr(model, "patch_size"):
        return int(model.num_prefix_tokens), model.global_pool, int(model.patch_size)
    raise ValueError(
        f"capture_attention does not know how {type(model).__name__} reads its tokens; expected a popevit ViT, "
        "a timm VisionTransformer or a torchvision VisionTransformer"
    )


def _timm_explicit_forward(m: nn.Module, record: Recorder) -> Callable[..., Tensor]:
    """A replacement ``forward`` for a timm ``Attention`` that runs the explicit path and records probabilities."""
    from timm.layers.attention import resolve_self_attn_mask

    def forward(x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        B, N, _ = x.shape
        gate = m.gate(x).sigmoid() if getattr(m, "gate", None) is not None else None
        q, k, v = m.qkv(x).reshape(B, N, 3, m.num_heads, m.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = m.q_norm(q), m.k_norm(k)  # each (B, H, N, D)
        bias = resolve_self_attn_mask(N, q, attn_mask, is_causal)
        dropout_p = m.attn_drop.p if m.training else 0.0
        x = attend(q, k, v, scale=m.scale, bias=bias, dropout_p=dropout_p, record=record)  # (B, H, N, D)
        x = m.norm(x.transpose(1, 2).reshape(B, N, m.attn_dim))
        if gate is not None:
            x = x * gate
        return m.proj_drop(m.proj(x))

    return forward


def _mha_explicit_forward(m: nn.MultiheadAttention, record: Recorder) -> Callable[..., Any]:
    """A replacement ``forward`` for a batch-first self-attention ``nn.MultiheadAttention`` (torchvision ViT).

    ``need_weights=True`` is not enough: torch returns a view made after the output was computed, so gradients
    with respect to it are never populated. This recomputes attention with the module's own weights instead.
    """

    def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None, **kwargs):
        if not (query is key is value) or not m.batch_first or key_padding_mask is not None or attn_mask is not None:
            raise RuntimeError(
                "capture_attention supports only batch-first, unmasked self-attention in MultiheadAttention"
            )
        B, N, C = query.shape
        H = m.num_heads
        qkv = F.linear(query, m.in_proj_weight, m.in_proj_bias)  # (B, N, 3C) = [q | k | v]
        q, k, v = qkv.reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, D)
        dropout_p = m.dropout if m.training else 0.0
        x = attend(q, k, v, scale=(C // H) ** -0.5, dropout_p=dropout_p, record=record)  # (B, H, N, D)
        return m.out_proj(x.transpose(1, 2).reshape(B, N, C)), None

    return forward


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[AttentionRecord]:
    """Record the attention probabilities of every block while the ``with`` block runs.

    Every attention layer switches to the explicit path; on exit the model is restored exactly. Each forward pass
    of ``model`` clears the record, so after ``logits = model(x)`` it holds that pass only.

    Example::

        with capture_attention(model) as rec:
            logits = model(x)                      # x: (B, C, H, W)
        rec.attn[-1].shape                         # (B, H, N, N), N = rec.num_prefix_tokens + gh * gw

    Args:
        model: a popevit ViT (any PE), ``deit_small``/``deit_small_pope`` (timm) or ``vit_b16`` (torchvision).

    Yields:
        The :class:`AttentionRecord`, filled during each forward pass.

    Raises:
        ValueError: the model has no attention layers (e.g. ``resnet18``) or an unknown token readout.
    """
    from timm.layers.attention import Attention as TimmAttention

    num_prefix_tokens, pool, patch_size = _readout(model)
    rec = AttentionRecord(num_prefix_tokens=num_prefix_tokens, pool=pool)
    ours: list[Attention] = []
    patched: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, Attention):
            m.record = rec.attn.append
            ours.append(m)
        elif isinstance(m, TimmAttention):
            m.forward = _timm_explicit_forward(m, rec.attn.append)
            patched.append(m)
        elif isinstance(m, nn.MultiheadAttention):
            m.forward = _mha_explicit_forward(m, rec.attn.append)
            patched.append(m)
    if not ours and not patched:
        raise ValueError(f"{type(model).__name__} has no attention layer to capture")

    def pre_hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        rec.attn.clear()
        h, w = args[0].shape[-2:]
        rec.grid = (h // patch_size, w // patch_size)

    handle = model.register_forward_pre_hook(pre_hook)
    try:
        yield rec
    finally:
        handle.remove()
        for m in ours:
            m.record = None
        for m in patched:
            del m.forward  # drops the instance attribute, the class method is back
