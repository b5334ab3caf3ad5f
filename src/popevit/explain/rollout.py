"""Attention rollout (Abnar & Zuidema 2020) and gradient-weighted rollout (Chefer et al. 2021) on plain tensors.

Attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL 2020, arXiv:2005.00928)
models the residual stream explicitly: with head-fused attention ``Ā_l`` (mean, max or min over heads), each block
contributes ``Â_l = norm_rows(0.5 Ā_l + 0.5 I)`` and the token-to-token flow is ``R = Â_L ... Â_2 Â_1`` (Eq. 1 of
the paper). Optionally the weakest entries are discarded first (jacobgil's ``discard_ratio``). Three mistakes of the
common implementation (jacobgil/vit-explain) are avoided here:

- the discard step is computed per sample (that code thresholds the whole batch and writes sample 0 only);
- attention *to* prefix tokens (the CLS readout) is never discarded (that code only protects entry (0, 0));
- the readout follows the model's pooling: the CLS row for CLS-pooled models, the mean of the patch rows for
  mean-pooled ones (a CLS row in a mean-pooled model is a token the classifier never reads).

Gradient rollout is the generic rule of Chefer, Gur & Wolf, "Generic Attention-model Explainability for
Interpreting Bi-Modal and Encoder-Decoder Transformers" (ICCV 2021, arXiv:2103.15679), Eqs. 5-6 for self-attention:
``Ā_l = E_h[(∇A_l ⊙ A_l)^+]`` and ``R ← R + Ā_l R`` from ``R = I``, where ``∇A_l`` is the gradient of the target
logit with respect to the softmax probabilities of block ``l``.

Everything here takes a list over blocks of attention probabilities ``(B, H, N, N)`` (N = prefix + patch tokens,
patches row-major) and returns patch maps ``(B, gh, gw)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

HeadFusion = Literal["mean", "max", "min"]
Pool = Literal["cls", "mean"]
HEAD_FUSIONS: tuple[str, ...] = ("mean", "max", "min")


def fuse_heads(attn: Tensor, fusion: HeadFusion = "mean") -> Tensor:
    """Fuse attention heads.

    Args:
        attn: (B, H, N, N) attention probabilities.
        fusion: ``"mean"``, ``"max"`` or ``"min"`` over heads.

    Returns:
        (B, N, N).
    """
    if fusion == "mean":
        return attn.mean(dim=1)
    if fusion == "max":
        return attn.amax(dim=1)
    if fusion == "min":
        return attn.amin(dim=1)
    raise ValueError(f"unknown head fusion {fusion!r}; use one of {HEAD_FUSIONS}")


def discard_lowest(attn: Tensor, ratio: float, num_prefix_tokens: int) -> Tensor:
    """Zero the lowest ``ratio`` of each sample's attention entries towards patch tokens.

    Entries whose key is a prefix token (the CLS readout) are never discarded, and the threshold is found per
    sample, so the result does not depend on what else is in the batch.

    Args:
        attn: (B, N, N) head-fused attention (rows = queries).
        ratio: fraction in [0, 1) of the patch-key entries of each sample to zero.
        num_prefix_tokens: prefix tokens in front of the patches.

    Returns:
        (B, N, N), a new tensor.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {ratio}")
    if ratio == 0.0:
        return attn
    B, N, _ = attn.shape
    patch_keys = attn[:, :, num_prefix_tokens:].reshape(B, -1)  # (B, N * P)
    k = int(patch_keys.shape[1] * ratio)
    if k == 0:
        return attn
    lowest = patch_keys.topk(k, dim=1, largest=False).indices  # (B, k)
    keep = torch.ones_like(patch_keys).scatter_(1, lowest, 0.0)  # (B, N * P)
    out = attn.clone()
    out[:, :, num_prefix_tokens:] = attn[:, :, num_prefix_tokens:] * keep.view(B, N, N - num_prefix_tokens)
    return out


def rollout_matrix(
    attns: Sequence[Tensor],
    *,
    num_prefix_tokens: int,
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    residual: float = 0.5,
) -> Tensor:
    """Token-to-token attention flow ``R = Â_L ... Â_1`` with ``Â = norm_rows((1 - residual) Ā + residual I)``.

    Args:
        attns: per block, (B, H, N, N) attention probabilities (first block first).
        num_prefix_tokens: prefix tokens in front of the patches.
        head_fusion: how heads are fused, see :func:`fuse_heads`.
        discard_ratio: fraction of weakest patch-key entries zeroed per block and sample, see :func:`discard_lowest`.
        residual: weight of the identity (skip connection); 0.5 as in Abnar & Zuidema.

    Returns:
        (B, N, N) row-stochastic flow matrix: row i is how token i's final state mixes the input tokens.
    """
    if not attns:
        raise ValueError("no attention maps given: the model has no attention blocks, or capture recorded none")
    if not 0.0 <= residual <= 1.0:
        raise ValueError(f"residual must be in [0, 1], got {residual}")
    B, _, N, _ = attns[0].shape
    eye = torch.eye(N, device=attns[0].device, dtype=torch.float32).expand(B, N, N)  # (B, N, N)
    R = eye.clone()
    for attn in attns:
        a = fuse_heads(attn.detach().float(), head_fusion)  # (B, N, N)
        a = discard_lowest(a, discard_ratio, num_prefix_tokens)
        a = (1.0 - residual) * a + residual * eye
        a = a / a.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        R = a @ R  # (B, N, N)
    return R


def readout(R: Tensor, *, num_prefix_tokens: int, grid: tuple[int, int], pool: Pool) -> Tensor:
    """Relevance of each patch for the pooled representation.

    Args:
        R: (B, N, N) relevance/flow matrix.
        num_prefix_tokens: prefix tokens in front of the patches.
        grid: patch grid ``(gh, gw)``; ``gh * gw`` must equal the number of patch tokens.
        pool: ``"cls"`` reads row 0 (the CLS token); ``"mean"`` averages the patch rows (the tokens mean pooling
            reads).

    Returns:
        (B, gh, gw) patch map.
    """
    B, N, _ = R.shape
    gh, gw = grid
    P = N - num_prefix_tokens
    if gh * gw != P:
        raise ValueError(
            f"grid {grid} has {gh * gw} patches but the attention has {P} patch tokens "
            f"(N={N}, num_prefix_tokens={num_prefix_tokens}); pass the grid of this input"
        )
    if pool == "cls":
        if num_prefix_tokens < 1:
            raise ValueError("pool='cls' needs a CLS token but num_prefix_tokens=0; use pool='mean'")
        row = R[:, 0, num_prefix_tokens:]  # (B, P)
    elif pool == "mean":
        row = R[:, num_prefix_tokens:, num_prefix_tokens:].mean(dim=1)  # (B, P)
    else:
        raise ValueError(f"unknown pool {pool!r}; use 'cls' or 'mean'")
    return row.reshape(B, gh, gw)


def attention_rollout(
    attns: Sequence[Tensor],
    *,
    num_prefix_tokens: int,
    grid: tuple[int, int],
    pool: Pool,
    head_fusion: HeadFusion = "mean",
    discard_ratio: float = 0.0,
    residual: float = 0.5,
) -> Tensor:
    """Attention-rollout patch maps (Abnar & Zuidema 2020, Eq. 1, with the residual identity).

    Args:
        attns: per block, (B, H, N, N) attention probabilities.
        num_prefix_tokens: prefix tokens in front of the patches.
        grid: patch grid ``(gh, gw)``.
        pool: the model's pooling, ``"cls"`` or ``"mean"`` (chooses the readout rows).
        head_fusion: ``"mean"``, ``"max"`` or ``"min"``.
        discard_ratio: fraction of weakest patch-key entries zeroed per block and sample.
        residual: identity weight.

    Returns:
        (B, gh, gw) non-negative maps.
    """
    R = rollout_matrix(
        attns,
        num_prefix_tokens=num_prefix_tokens,
        head_fusion=head_fusion,
        discard_ratio=discard_ratio,
        residual=residual,
    )
    return readout(R, num_prefix_tokens=num_prefix_tokens, grid=grid, pool=pool)


def gradient_rollout(
    attns: Sequence[Tensor],
    grads: Sequence[Tensor],
    *,
    num_prefix_tokens: int,
    grid: tuple[int, int],
    pool: Pool,
) -> Tensor:
    """Gradient-weighted rollout, Chefer et al. 2021 Eqs. 5-6: ``R ← R + E_h[(∇A ⊙ A)^+] R`` from ``R = I``.

    Args:
        attns: per block, (B, H, N, N) attention probabilities.
        grads: per block, (B, H, N, N) gradients of the target logit w.r.t. those probabilities.
        num_prefix_tokens: prefix tokens in front of the patches.
        grid: patch grid ``(gh, gw)``.
        pool: the model's pooling, ``"cls"`` or ``"mean"``.

    Returns:
        (B, gh, gw) non-negative maps; the identity's contribution is removed (a patch's relevance to itself
        would otherwise flood mean-pooled readouts).
    """
    if len(attns) != len(grads):
        raise ValueError(f"{len(attns)} attention maps but {len(grads)} gradients; pass one gradient per block")
    if not attns:
        raise ValueError("no attention maps given: the model has no attention blocks, or capture recorded none")
    B, _, N, _ = attns[0].shape
    eye = torch.eye(N, device=attns[0].device, dtype=torch.float32).expand(B, N, N)
    R = eye.clone()
    for attn, grad in zip(attns, grads, strict=True):
        cam = (grad.detach().float() * attn.detach().float()).clamp_min(0).mean(dim=1)  # (B, N, N)
        R = R + cam @ R
    return readout(R - eye, num_prefix_tokens=num_prefix_tokens, grid=grid, pool=pool)
