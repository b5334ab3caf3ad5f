"""Cross-checks against independent implementations: lucidrains' PoPE-pytorch and timm's RotaryEmbeddingMixed."""

from __future__ import annotations

import math

import pytest
import torch

from popevit.models import build_pos_enc

H, D = 2, 16


def _pe(name: str, grid: tuple[int, int], depth: int = 1):
    return build_pos_enc(name, embed_dim=H * D, num_heads=H, depth=depth, num_prefix_tokens=0, grid=grid)


def _random_delta(pe) -> None:
    with torch.no_grad():
        pe.delta.uniform_(-2 * math.pi, 0)


def test_pope_matches_lucidrains_1d() -> None:
    """On a one-row grid the y phases vanish and axial PoPE is 1-D PoPE with frequencies [theta, 0]."""
    pope_pytorch = pytest.importorskip("PoPE_pytorch", reason="oracle PoPE-pytorch (pip: PoPE-pytorch) not installed")
    from PoPE_pytorch.attention import compute_attn_similarity_non_fused

    grid = (1, 11)
    pe = _pe("pope", grid)
    _random_delta(pe)
    theta = 100.0 ** -(torch.arange(D // 2) / (D // 2))
    ref_pe = pope_pytorch.PoPE(D, heads=H, inv_freqs=torch.cat([theta, torch.zeros(D // 2)]))
    with torch.no_grad():
        ref_pe.bias.copy_(pe.delta[0])
    q, k = torch.randn(2, H, 11, D), torch.randn(2, H, 11, D)
    qt, kt = pe.transform_qk(q, k, 0, grid)
    ref = compute_attn_similarity_non_fused(q, k, ref_pe(11))  # (B, H, N, N), unscaled
    torch.testing.assert_close(qt @ kt.transpose(-2, -1), ref, rtol=1e-5, atol=1e-5)


def test_pope_matches_lucidrains_axial_2d() -> None:
    pytest.importorskip("PoPE_pytorch", reason="oracle PoPE-pytorch (pip: PoPE-pytorch) not installed")
    from PoPE_pytorch import AxialPoPE
    from PoPE_pytorch.attention import compute_attn_similarity_non_fused

    grid = (3, 5)
    pe = _pe("pope", grid)
    _random_delta(pe)
    ref_pe = AxialPoPE(D, heads=H, axial_dims=(D // 2, D // 2), theta=100)
    with torch.no_grad():
        ref_pe.bias.copy_(pe.delta[0])
    q, k = torch.randn(2, H, 15, D), torch.randn(2, H, 15, D)
    qt, kt = pe.transform_qk(q, k, 0, grid)
    ref = compute_attn_similarity_non_fused(q, k, ref_pe(grid))
    torch.testing.assert_close(qt @ kt.transpose(-2, -1), ref, rtol=1e-5, atol=1e-5)


def test_rope_mixed_matches_timm_up_to_channel_layout() -> None:
    """timm interleaves channel pairs (2c, 2c+1); we rotate (c, c + D/2): equal after a fixed permutation."""
    from timm.layers.pos_embed_sincos import RotaryEmbeddingMixed, apply_rot_embed_cat

    grid, depth = (3, 5), 3
    pe = _pe("rope_mixed", grid, depth=depth)
    ref = RotaryEmbeddingMixed(H * D, depth=depth, num_heads=H)
    with torch.no_grad():
        ref.freqs.copy_(pe.freqs.permute(3, 0, 1, 2))  # ours (depth, H, D/2, 2) -> timm (2, depth, H, D/2)
    emb = ref.get_embed(list(grid))  # (depth, H, P, 2D)
    perm = torch.cat([torch.arange(0, D, 2), torch.arange(1, D, 2)])  # interleaved -> rotate-half layout
    q, k = torch.randn(2, H, 15, D), torch.randn(2, H, 15, D)
    for layer in range(depth):
        qt, kt = pe.transform_qk(q[..., perm], k[..., perm], layer, grid)
        torch.testing.assert_close(qt, apply_rot_embed_cat(q, emb[layer])[..., perm], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(kt, apply_rot_embed_cat(k, emb[layer])[..., perm], rtol=1e-5, atol=1e-5)
