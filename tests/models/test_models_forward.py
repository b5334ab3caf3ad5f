"""Forward/backward for every registered model and PE, resolution change, weight-decay declarations, registry errors."""

from __future__ import annotations

import pytest
import torch

from popevit.models import create_model, is_vit, list_models, list_pos_encs

PES = list_pos_encs()
MODELS = list_models()
SMALL = 32  # px for tests; vit_b16/deit need a multiple of 16


def _check_forward_backward(model: torch.nn.Module, x: torch.Tensor, num_classes: int) -> None:
    out = model(x)
    assert out.shape == (x.shape[0], num_classes)
    assert torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad}"
    if not any(n.startswith("heads.") and not p.any() for n, p in model.named_parameters()):  # vit_b16: zero head
        zero = [n for n, p in model.named_parameters() if p.requires_grad and not p.grad.any()]
        assert not zero, f"parameters with an all-zero gradient: {zero}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("pool", ["cls", "mean"])
@pytest.mark.parametrize("pe", PES)
def test_smallest_vit_forward_backward_every_pe(pe: str, pool: str) -> None:
    model = create_model("vit_p8_w32_d2", num_classes=3, img_size=SMALL, pos_enc=pe, pool=pool)
    assert model.num_prefix_tokens == (1 if pool == "cls" else 0)
    _check_forward_backward(model, torch.randn(2, 1, SMALL, SMALL), 3)


SLOW_BIG = [pytest.param(n, marks=pytest.mark.slow) if n == "vit_b16" else n for n in MODELS]


@pytest.mark.parametrize("name", SLOW_BIG)
def test_every_model_forward_backward(name: str) -> None:
    """Also checks the weight-decay declaration; other input sizes are covered by the attention-capture tests."""
    model = create_model(name, num_classes=4, img_size=SMALL)
    _check_forward_backward(model, torch.randn(2, 1, SMALL, SMALL), 4)
    nwd = model.no_weight_decay()
    assert nwd <= dict(model.named_parameters()).keys()
    if name != "resnet18":
        assert nwd, "transformers must exempt at least their CLS token or position table"


@pytest.mark.parametrize("pe", PES)
def test_vit_three_channels_and_non_square_input(pe: str) -> None:
    model = create_model("vit_p8_w32_d2", num_classes=2, in_chans=3, img_size=SMALL, pos_enc=pe).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 24, 40)).shape == (2, 2)


@pytest.mark.parametrize("pe", ["none", "sincos", "rope_axial", "rope_mixed", "pope", "pope_mixed"])
def test_positions_are_recomputed_for_new_grids(pe: str) -> None:
    """A model built for 32 px and run at 64 px equals the same weights built for 64 px (fixed codes recomputed)."""
    small = create_model("vit_p8_w32_d2", num_classes=2, img_size=32, pos_enc=pe).eval()
    big = create_model("vit_p8_w32_d2", num_classes=2, img_size=64, pos_enc=pe).eval()
    big.load_state_dict(small.state_dict())
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(small(x), big(x), rtol=1e-5, atol=1e-5)


def test_learnable_is_resampled_to_new_grids() -> None:
    model = create_model("vit_p8_w32_d2", num_classes=2, img_size=32, pos_enc="learnable").eval()
    with torch.no_grad():
        base = model.pos_enc.pos_embed.clone()
        x = torch.zeros(1, 1 + 8 * 8, 32)
        added = model.pos_enc.add_to_tokens(x, (8, 8))  # 4x4 table -> 8x8
        assert added.shape == (1, 65, 32)
        torch.testing.assert_close(added[0, 0], base[0, 0])  # the CLS entry is not resampled
        torch.testing.assert_close(model.pos_enc.add_to_tokens(x[:, :17], (4, 4)), base)  # reference grid: as is


@pytest.mark.parametrize("pe", PES)
def test_every_learned_pe_tensor_escapes_weight_decay(pe: str) -> None:
    model = create_model("vit_p8_w32_d2", num_classes=2, img_size=SMALL, pos_enc=pe)
    pe_params = {f"pos_enc.{n}" for n, _ in model.pos_enc.named_parameters()}
    assert pe_params <= model.no_weight_decay()
    assert "cls_token" in model.no_weight_decay()


def test_is_vit() -> None:
    assert is_vit("vit_p8_w32_d2") and is_vit("vit_p16_w512_d6")
    assert not any(is_vit(n) for n in ("deit_small", "deit_small_pope", "resnet18", "vit_b16"))


@pytest.mark.parametrize(
    ("name", "bad", "hint"),
    [("vit_p8_w32-d2", "model", "'vit_p8_w32_d2'"), ("vit_p8_w32_d2", "pos_enc", "'rope_axial'")],
)
def test_registry_is_strict_with_did_you_mean(name: str, bad: str, hint: str) -> None:
    kwargs = {"pos_enc": "rope-axial"} if bad == "pos_enc" else {}
    with pytest.raises(ValueError, match=f"did you mean {hint}"):
        create_model(name, num_classes=2, img_size=SMALL, **kwargs)


@pytest.mark.parametrize(
    ("name", "kwargs", "option"),
    [
        ("resnet18", {"pos_enc": "pope"}, "pos_enc"),
        ("resnet18", {"drop_path": 0.1}, "drop_path"),
        ("resnet18", {"patch_size": 8}, "patch_size"),
        ("deit_small", {"pos_enc": "pope"}, "pos_enc"),
        ("deit_small", {"patch_size": 8}, "patch_size"),
        ("deit_small_pope", {"pos_enc": "rope_axial"}, "pos_enc"),
        ("vit_b16", {"drop_path": 0.1}, "drop_path"),
        ("vit_b16", {"pool": "mean"}, "pool"),
    ],
)
def test_baselines_reject_options_they_cannot_honour(name: str, kwargs: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option):
        create_model(name, num_classes=2, img_size=SMALL, **kwargs)


def test_bad_input_sizes_and_options_raise() -> None:
    model = create_model("vit_p8_w32_d2", num_classes=2, img_size=SMALL)
    with pytest.raises(ValueError, match="not divisible by the patch size 8"):
        model(torch.randn(1, 1, 30, 32))
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        create_model("vit_p8_w32_d2", num_classes=2, img_size=30)
    with pytest.raises(ValueError, match="in_chans"):
        create_model("vit_p8_w32_d2", num_classes=2, in_chans=2)


@pytest.mark.parametrize("name", ["vit_p8_w32_d2", "resnet18"])
def test_freeze_backbone_trains_the_head_only(name: str) -> None:
    model = create_model(name, num_classes=2, img_size=SMALL, freeze_backbone=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = "fc" if name == "resnet18" else "head"
    assert trainable == {f"{head}.weight", f"{head}.bias"}
    model(torch.randn(2, 1, SMALL, SMALL)).sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)


def test_preset_options_reach_the_config() -> None:
    model = create_model(
        "vit_p16_w192_d6",
        num_classes=5,
        img_size=64,
        patch_size=8,
        dropout=0.1,
        attn_dropout=0.2,
        drop_path=0.3,
        pool="cls",
    )
    cfg = model.cfg
    assert (cfg.patch_size, cfg.dropout, cfg.attn_dropout, cfg.drop_path, cfg.pool) == (8, 0.1, 0.2, 0.3, "cls")
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_dim) == (192, 6, 3, 384)
    assert model.pos_enc.name == "pope" and model.grid_size((64, 32)) == (8, 4)
    seed = create_model("vit_p16_w512_d6", num_classes=4, img_size=32).cfg
    assert (seed.embed_dim, seed.depth, seed.num_heads, seed.mlp_dim, seed.pool) == (512, 6, 8, 1024, "mean")
