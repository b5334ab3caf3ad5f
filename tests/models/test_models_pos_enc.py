"""Properties that pin the maths of each positional encoding (not smoke tests)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from popevit.models import attend, build_pos_enc, create_model, list_pos_encs
from popevit.models.pos_enc import POS_ENCS, patch_positions

H, D = 2, 16
RELATIVE_QK = [n for n in list_pos_encs() if n.startswith(("rope", "pope"))]


def _pe(name: str, grid=(6, 7), depth: int = 2, prefix: int = 0):
    return build_pos_enc(name, embed_dim=H * D, num_heads=H, depth=depth, num_prefix_tokens=prefix, grid=grid)


def _logits(pe, q, k, layer, grid):
    qt, kt = pe.transform_qk(q, k, layer, grid)
    return qt @ kt.transpose(-2, -1)  # (B, H, N, N), unscaled


@pytest.mark.parametrize("name", RELATIVE_QK)
def test_rope_pope_logits_are_invariant_to_a_shared_shift(name: str) -> None:
    """Content placed on a 3x3 window gives the same patch-patch logits wherever the window sits on the grid."""
    grid, layer = (6, 7), 1
    pe = _pe(name, grid)
    if hasattr(pe, "delta"):
        with torch.no_grad():
            pe.delta.uniform_(-2 * math.pi, 0)  # a non-zero phase bias must not break relativity
    content_q, content_k = torch.randn(1, H, 3, 3, D), torch.randn(1, H, 3, 3, D)

    def place(r0: int, c0: int) -> torch.Tensor:
        q, k = torch.randn(1, H, *grid, D), torch.randn(1, H, *grid, D)  # noise elsewhere
        q[:, :, r0 : r0 + 3, c0 : c0 + 3], k[:, :, r0 : r0 + 3, c0 : c0 + 3] = content_q, content_k
        idx = torch.tensor([(r0 + r) * grid[1] + c0 + c for r in range(3) for c in range(3)])
        logits = _logits(pe, q.flatten(2, 3), k.flatten(2, 3), layer, grid)  # (1, H, P, P)
        return logits[:, :, idx][:, :, :, idx]  # (1, H, 9, 9) window block

    a, b = place(0, 0), place(2, 3)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # ... and position matters: the same content at another relative layout gives other logits.
    assert not torch.allclose(a, a.flip(-1), atol=1e-3)


@pytest.mark.parametrize("name", RELATIVE_QK)
def test_rope_pope_logits_depend_only_on_offset(name: str) -> None:
    """The same q content at every token and the same k content at every token: logits are a function of offset."""
    grid = (5, 6)
    pe = _pe(name, grid)
    q = torch.randn(1, H, 1, D).expand(1, H, 30, D)
    k = torch.randn(1, H, 1, D).expand(1, H, 30, D)
    logits = _logits(pe, q, k, 0, grid)[0]  # (H, P, P)
    pos = patch_positions(grid).long()
    off = pos[:, None] - pos[None, :]  # (P, P, 2)
    key = (off[..., 0] + 10) * 100 + off[..., 1] + 10
    for u in key.unique():
        vals = logits[:, key == u]  # (H, pairs)
        torch.testing.assert_close(vals, vals[:, :1].expand_as(vals), rtol=1e-4, atol=1e-4)
    assert logits.std() > 1e-3


def test_none_is_permutation_equivariant_over_patches() -> None:
    model = create_model("vit_p8_w32_d2", num_classes=3, img_size=32, pos_enc="none").eval()
    x = torch.randn(2, 1, 32, 32)
    perm = torch.randperm(16)

    def permute_patches(img: torch.Tensor) -> torch.Tensor:
        p = img.unfold(2, 8, 8).unfold(3, 8, 8).reshape(2, 1, 16, 8, 8)[:, :, perm]  # (B, 1, P, 8, 8)
        return p.reshape(2, 1, 4, 4, 8, 8).permute(0, 1, 2, 4, 3, 5).reshape(2, 1, 32, 32)

    with torch.no_grad():
        tokens, tokens_p = model.forward_features(x), model.forward_features(permute_patches(x))
        torch.testing.assert_close(tokens_p[:, 1:], tokens[:, 1:][:, perm], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(tokens_p[:, 0], tokens[:, 0], rtol=1e-4, atol=1e-5)
        # a positional model is not equivariant (the test can fail)
        pope = create_model("vit_p8_w32_d2", num_classes=3, img_size=32, pos_enc="pope").eval()
        t, tp = pope.forward_features(x), pope.forward_features(permute_patches(x))
        assert not torch.allclose(tp[:, 1:], t[:, 1:][:, perm], atol=1e-3)


def test_sincos_has_no_trainable_parameters() -> None:
    pe = _pe("sincos")
    assert sum(p.numel() for p in pe.parameters()) == 0
    assert not pe.state_dict()  # the table is a non-persistent buffer
    none = create_model("vit_p8_w32_d2", num_classes=2, img_size=32, pos_enc="none")
    sincos = create_model("vit_p8_w32_d2", num_classes=2, img_size=32, pos_enc="sincos")
    assert sum(p.numel() for p in sincos.parameters()) == sum(p.numel() for p in none.parameters())
    out = pe.add_to_tokens(torch.zeros(1, 42, H * D), (6, 7))[0]  # (P, C)
    assert out.abs().max() <= 1.0 and len(out.unique(dim=0)) == 42  # bounded, one code per patch


def test_sincos_leaves_cls_alone_and_codes_both_axes() -> None:
    pe = _pe("sincos", grid=(4, 5), prefix=1)
    out = pe.add_to_tokens(torch.zeros(1, 21, H * D), (4, 5))[0]  # (N, C)
    assert out[0].abs().sum() == 0
    patches = out[1:].reshape(4, 5, H * D)
    c = H * D // 2
    torch.testing.assert_close(patches[:, 0, :c], patches[:, 3, :c])  # y half: same row -> same code
    torch.testing.assert_close(patches[0, :, c:], patches[2, :, c:])  # x half: same column -> same code
    assert not torch.allclose(patches[0, 0], patches[1, 1])


def test_rel_bias_depends_only_on_offset_and_clamps_beyond_the_table() -> None:
    pe = _pe("rel_bias", grid=(4, 5), prefix=1)
    with torch.no_grad():
        pe.bias_table.normal_()
    grid = (4, 5)
    bias = pe.attn_bias(1, grid)  # (H, N, N)
    assert bias.shape == (H, 21, 21)
    pos = patch_positions(grid).long()
    off = pos[:, None] - pos[None, :]
    key = (off[..., 0] + 10) * 100 + off[..., 1] + 10
    patch = bias[:, 1:, 1:]
    for u in key.unique():
        vals = patch[:, key == u]
        assert torch.equal(vals, vals[:, :1].expand_as(vals))
    assert len(patch[0].unique()) == len(key.unique())  # different offsets, different entries
    assert len(bias[:, 0, 1:].unique()) == H and len(bias[:, 1:, 0].unique()) == H  # CLS entries are per head
    # a larger grid reuses the same entry for every offset within the trained range
    big = pe.attn_bias(1, (8, 9))[:, 1:, 1:]
    pos8 = patch_positions((8, 9)).long()
    i, j = 0 * 9 + 0, 2 * 9 + 3  # offset (dx, dy) = (-3, -2), within range
    i4, j4 = 0 * 5 + 0, 2 * 5 + 3
    assert torch.equal(big[:, i, j], patch[:, i4, j4])
    assert (pos8[i] - pos8[j]).tolist() == (pos[i4] - pos[j4]).tolist()


def test_rel_bias_layers_are_independent() -> None:
    pe = _pe("rel_bias", grid=(3, 3))
    assert not torch.equal(pe.attn_bias(0, (3, 3)), pe.attn_bias(1, (3, 3)))


def test_pope_delta_learns_from_zero_and_stays_in_range() -> None:
    model = create_model("vit_p8_w32_d2", num_classes=2, img_size=32, pos_enc="pope")
    pe, x = model.pos_enc, torch.randn(4, 1, 32, 32)
    model(x).square().sum().backward()
    assert pe.delta.grad.abs().sum() > 0  # init 0 sits on the bound: the gradient must still flow
    opt = torch.optim.SGD([pe.delta], lr=0.01)

    def push(sign: float, steps: int) -> torch.Tensor:
        for _ in range(steps):
            opt.zero_grad()
            pushed = sum(pe.delta_clamped(i).sum() for i in range(model.cfg.depth))
            (sign * 100 * pushed + model(x).square().mean()).backward()
            opt.step()
            eff = torch.stack([pe.delta_clamped(i) for i in range(model.cfg.depth)])
            assert eff.min() >= -2 * math.pi and eff.max() <= 0.0
        return eff

    assert push(+1, 3).max() < 0  # left the top bound it started on
    assert push(+1, 10).min() == -2 * math.pi  # pinned at the bottom ...
    assert pe.delta.min() > -2 * math.pi - 1.5  # ... without the raw parameter running away
    assert push(-1, 2).min() > -2 * math.pi  # and it comes straight back when pushed up


def test_pope_delta_starts_at_zero_and_shifts_key_phases() -> None:
    pe = _pe("pope", grid=(2, 2), prefix=1)
    assert torch.equal(pe.delta, torch.zeros_like(pe.delta))
    q, k = torch.randn(1, H, 5, D), torch.randn(1, H, 5, D)
    before = _logits(pe, q, k, 0, (2, 2))
    with torch.no_grad():
        pe.delta[0].fill_(-1.0)
    after = _logits(pe, q, k, 0, (2, 2))
    torch.testing.assert_close(after[..., 0, 0], before[..., 0, 0])  # CLS-CLS: no phase, no delta
    assert not torch.allclose(after[..., 1:, 1:], before[..., 1:, 1:])


@pytest.mark.parametrize("name", ["pope", "pope_mixed"])
def test_pope_cls_gets_magnitude_only_and_q_k_double_width(name: str) -> None:
    pe = _pe(name, grid=(2, 3), prefix=1)
    assert type(pe).qk_expansion == 2
    q, k = torch.randn(1, H, 7, D), torch.randn(1, H, 7, D)
    qt, kt = pe.transform_qk(q, k, 1, (2, 3))
    assert qt.shape == kt.shape == (1, H, 7, 2 * D)
    torch.testing.assert_close(qt[..., 0, :D], F.softplus(q[..., 0, :]))
    assert qt[..., 0, D:].abs().max() == 0 and kt[..., 0, D:].abs().max() == 0
    # magnitude = softplus(content) for every token: |(mu cos, mu sin)| = mu
    torch.testing.assert_close(qt[..., :D].hypot(qt[..., D:]), F.softplus(q))
    assert pe.attn_scale() == pytest.approx(D**-0.5)


@pytest.mark.parametrize("name", ["rope_axial", "rope_mixed"])
def test_rope_leaves_cls_unrotated_and_preserves_norms(name: str) -> None:
    pe = _pe(name, grid=(2, 3), prefix=1)
    q, k = torch.randn(1, H, 7, D), torch.randn(1, H, 7, D)
    qt, kt = pe.transform_qk(q, k, 0, (2, 3))
    torch.testing.assert_close(qt[..., 0, :], q[..., 0, :])
    torch.testing.assert_close(kt[..., 0, :], k[..., 0, :])
    torch.testing.assert_close(qt.norm(dim=-1), q.norm(dim=-1))


def test_mixed_frequencies_are_learned_per_layer() -> None:
    for name in ("rope_mixed", "pope_mixed"):
        pe = _pe(name, depth=3)
        assert pe.freqs.requires_grad and pe.freqs.shape[:2] == (3, H)
        assert not torch.equal(pe.freqs[0], pe.freqs[1])


@pytest.mark.parametrize("qk_width", [D, 2 * D])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_and_explicit_attention_agree(qk_width: int, with_bias: bool) -> None:
    q, k, v = torch.randn(2, H, 9, qk_width), torch.randn(2, H, 9, qk_width), torch.randn(2, H, 9, D)
    bias = torch.randn(1, H, 9, 9) if with_bias else None
    probs: list[torch.Tensor] = []
    fused = attend(q, k, v, scale=0.3, bias=bias)
    explicit = attend(q, k, v, scale=0.3, bias=bias, record=probs.append)
    torch.testing.assert_close(fused, explicit, rtol=1e-5, atol=1e-5)
    assert probs[0].shape == (2, H, 9, 9)
    torch.testing.assert_close(probs[0].sum(-1), torch.ones(2, H, 9))


def test_every_registered_pe_has_a_docstring_citing_its_source() -> None:
    import inspect

    for name in POS_ENCS.names():
        module = inspect.getmodule(POS_ENCS.get(name))
        assert "arXiv" in (module.__doc__ or ""), f"{name}: module docstring must cite the paper"


def test_duplicate_pe_registration_raises() -> None:
    from popevit.models.pos_enc import PositionalEncoding, register_pos_enc

    with pytest.raises(ValueError, match="already registered"):
        register_pos_enc("pope")(type("Dup", (PositionalEncoding,), {}))
