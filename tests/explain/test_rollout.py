"""Rollout maths on hand-made attention, and on every registered PE through capture_attention."""

from __future__ import annotations

import pytest
import torch

from popevit.explain.methods import METHODS
from popevit.explain.rollout import (
    attention_rollout,
    discard_lowest,
    fuse_heads,
    gradient_rollout,
    readout,
    rollout_matrix,
)
from popevit.models import capture_attention, create_model, list_pos_encs


def _random_attn(B: int, H: int, N: int, depth: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, N, N, generator=g).mul(3).softmax(-1) for _ in range(depth)]


@pytest.mark.parametrize("fusion", ["mean", "max", "min"])
@pytest.mark.parametrize("discard", [0.0, 0.5, 0.9])
def test_rollout_rows_sum_to_one_for_batch_above_one(fusion, discard):
    attns = _random_attn(B=4, H=3, N=1 + 16, depth=3)
    R = rollout_matrix(attns, num_prefix_tokens=1, head_fusion=fusion, discard_ratio=discard)
    assert R.shape == (4, 17, 17)
    torch.testing.assert_close(R.sum(-1), torch.ones(4, 17))
    assert (R >= 0).all()


def test_discard_is_per_sample_and_batch_independent():
    attns = _random_attn(B=3, H=2, N=1 + 9, depth=2, seed=1)
    attns[0][1] *= 100.0  # scale one sample: a batch-wide threshold would then zero most of the others
    together = rollout_matrix(attns, num_prefix_tokens=1, discard_ratio=0.6)
    for b in range(3):
        alone = rollout_matrix([a[b : b + 1] for a in attns], num_prefix_tokens=1, discard_ratio=0.6)
        torch.testing.assert_close(together[b : b + 1], alone)


def test_discard_never_touches_prefix_keys_and_zeroes_the_requested_share():
    a = fuse_heads(_random_attn(B=2, H=1, N=1 + 16, depth=1)[0])  # (2, 17, 17)
    out = discard_lowest(a, 0.75, num_prefix_tokens=1)
    torch.testing.assert_close(out[:, :, 0], a[:, :, 0])  # attention to the CLS readout is kept
    zeroed = (out[:, :, 1:] == 0).flatten(1).sum(1)
    assert zeroed.tolist() == [int(17 * 16 * 0.75)] * 2
    kept = out[:, :, 1:][out[:, :, 1:] > 0]
    assert kept.min() >= a[:, :, 1:].flatten(1).kthvalue(int(17 * 16 * 0.75), dim=1).values.min()


def test_cls_readout_follows_the_residual_identity_by_hand():
    # One block, one head, CLS + 4 patches; CLS attends only to patch 2 (token 3).
    A = torch.eye(5)
    A[0] = torch.tensor([0.0, 0.0, 0.0, 1.0, 0.0])
    maps = attention_rollout([A[None, None]], num_prefix_tokens=1, grid=(2, 2), pool="cls")
    # R[0] = 0.5 e_0 + 0.5 e_3 -> patch map [0, 0, 0.5, 0]
    torch.testing.assert_close(maps, torch.tensor([[[0.0, 0.0], [0.5, 0.0]]]))


def test_mean_readout_averages_patch_rows_by_hand():
    # No prefix; every patch attends to patch 0. R = 0.5 I + 0.5 * ones e_0^T; mean of rows.
    A = torch.zeros(4, 4)
    A[:, 0] = 1.0
    maps = attention_rollout([A[None, None]], num_prefix_tokens=0, grid=(2, 2), pool="mean")
    torch.testing.assert_close(maps, torch.tensor([[[0.625, 0.125], [0.125, 0.125]]]))


def test_mean_readout_ignores_prefix_rows():
    R = torch.zeros(1, 5, 5)
    R[0, 0, 1] = 1.0  # CLS row points at patch 0: a mean-pooled model never reads it
    R[0, 1:, 4] = 1.0  # every patch row points at patch 3
    assert readout(R, num_prefix_tokens=1, grid=(2, 2), pool="mean").flatten().tolist() == [0, 0, 0, 1]
    assert readout(R, num_prefix_tokens=1, grid=(2, 2), pool="cls").flatten().tolist() == [1, 0, 0, 0]


def test_head_fusion_by_hand():
    a = torch.tensor([[0.2, 0.8], [0.6, 0.4]])[None, :, None, :].expand(1, 2, 2, 2)  # heads differ
    assert fuse_heads(a, "max")[0, 0].tolist() == pytest.approx([0.6, 0.8])
    assert fuse_heads(a, "min")[0, 0].tolist() == pytest.approx([0.2, 0.4])
    assert fuse_heads(a, "mean")[0, 0].tolist() == pytest.approx([0.4, 0.6])
    with pytest.raises(ValueError, match="unknown head fusion 'avg'"):
        fuse_heads(a, "avg")  # type: ignore[arg-type]


def test_gradient_rollout_one_block_by_hand():
    attn = _random_attn(B=2, H=2, N=1 + 4, depth=1, seed=3)
    grad = [torch.randn(2, 2, 5, 5, generator=torch.Generator().manual_seed(4))]
    maps = gradient_rollout(attn, grad, num_prefix_tokens=1, grid=(2, 2), pool="cls")
    expected = (grad[0] * attn[0]).clamp_min(0).mean(1)[:, 0, 1:].reshape(2, 2, 2)  # (I + Ā) I - I = Ā
    torch.testing.assert_close(maps, expected)


def test_grid_mismatch_and_bad_arguments_raise_with_the_fix():
    attns = _random_attn(B=1, H=1, N=1 + 4, depth=1)
    with pytest.raises(ValueError, match=r"grid \(3, 3\) has 9 patches"):
        attention_rollout(attns, num_prefix_tokens=1, grid=(3, 3), pool="cls")
    with pytest.raises(ValueError, match="discard_ratio must be in"):
        rollout_matrix(attns, num_prefix_tokens=1, discard_ratio=1.0)
    with pytest.raises(ValueError, match="needs a CLS token"):
        attention_rollout(_random_attn(1, 1, 4, 1), num_prefix_tokens=0, grid=(2, 2), pool="cls")


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("pos_enc", list_pos_encs())
def test_every_pos_enc_gives_patch_grid_maps_and_stochastic_rows(pos_enc, pool):
    model = create_model("vit_p8_w32_d2", num_classes=3, img_size=32, pos_enc=pos_enc, pool=pool).eval()
    x = torch.randn(3, 1, 32, 48)  # non-square input: grid (4, 6)
    target = torch.tensor([0, 1, 2])
    with capture_attention(model) as rec, torch.no_grad():
        model(x)
    assert rec.grid == (4, 6) and rec.pool == pool
    R = rollout_matrix(rec.attn, num_prefix_tokens=rec.num_prefix_tokens, discard_ratio=0.3)
    torch.testing.assert_close(R.sum(-1), torch.ones(3, R.shape[1]))
    for method in ("rollout", "grad-rollout"):
        maps = METHODS.get(method)(model, x, target)
        assert maps.shape == (3, 4, 6), method
        assert torch.isfinite(maps).all() and (maps >= 0).all()
        assert maps.flatten(1).std(1).min() > 0, f"{method} maps are constant"


def test_rollout_of_a_batch_equals_rollout_of_each_image():
    model = create_model("vit_p8_w32_d2", num_classes=3, img_size=32, pos_enc="rope_axial").eval()
    x = torch.randn(3, 1, 32, 32)
    t = torch.tensor([2, 0, 1])
    for method in ("rollout", "grad-rollout"):
        batch = METHODS.get(method)(model, x, t)
        single = torch.cat([METHODS.get(method)(model, x[i : i + 1], t[i : i + 1]) for i in range(3)])
        torch.testing.assert_close(batch, single, rtol=1e-4, atol=1e-7)
