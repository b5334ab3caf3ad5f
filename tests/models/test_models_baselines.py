"""Pretrained loading from local files (no network), offline failure, and attention capture on every transformer."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from popevit.models import capture_attention, create_model, list_pos_encs


@pytest.fixture(scope="module")
def deit_file(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A DeiT-Small state dict built locally by timm (random weights, no download; 64 px keeps it fast)."""
    torch.manual_seed(0)
    ref = timm.create_model("deit_small_patch16_224", pretrained=False, img_size=64).eval()
    path = tmp_path_factory.mktemp("weights") / "deit_small.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    return path, ref


def test_deit_small_reproduces_timm_logits(deit_file) -> None:
    path, ref = deit_file
    model = create_model("deit_small", num_classes=1000, in_chans=3, img_size=64, pretrained=path).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-4)


def test_deit_small_adapts_stem_head_and_grid(deit_file) -> None:
    """1 channel: summed RGB filters on a gray image equal timm's on the gray image repeated; head and grid adapted."""
    path, ref = deit_file
    model = create_model("deit_small", num_classes=4, in_chans=1, img_size=32, pretrained=path).eval()
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model.patch_embed(x), ref.patch_embed.proj(x.expand(-1, 3, -1, -1)).permute(0, 2, 3, 1)
        )
    assert model.head.weight.shape == (4, 384)
    expected = resample_abs_pos_embed(ref.pos_embed, new_size=[2, 2], old_size=[4, 4], num_prefix_tokens=1)
    torch.testing.assert_close(model.pos_embed, expected)  # 4x4 table resampled to the 2x2 grid
    torch.testing.assert_close(model.cls_token, ref.cls_token)


def test_deit_small_pope_shares_every_non_attention_weight(deit_file) -> None:
    path, _ = deit_file
    deit = create_model("deit_small", num_classes=4, img_size=32, pretrained=path)
    pope = create_model("deit_small_pope", num_classes=4, img_size=32, pretrained=path)
    sd_deit, sd_pope = deit.state_dict(), pope.state_dict()
    new = {k for k in sd_pope if k not in sd_deit}
    assert new == {f"blocks.{i}.attn.pos_enc.delta" for i in range(12)}
    assert set(sd_deit) <= set(sd_pope)
    for k, v in sd_deit.items():
        if not k.startswith("head."):
            assert torch.equal(v, sd_pope[k]), k
    assert all(sd_pope[k].abs().max() == 0 for k in new)  # delta starts at 0


def test_pth_is_loaded_without_pickle_execution(tmp_path: Path) -> None:
    ref = create_model("resnet18", num_classes=4, in_chans=3)
    good = tmp_path / "r18.pth"
    torch.save({"state_dict": ref.state_dict()}, good)
    model = create_model("resnet18", num_classes=4, in_chans=1, pretrained=good)
    torch.testing.assert_close(model.conv1.weight, ref.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(model.fc.weight, ref.fc.weight)  # same head shape: kept

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    bad = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, bad)
    with pytest.raises(Exception, match=r"(?i)weights_only|unpickl|global"):
        create_model("resnet18", num_classes=4, pretrained=bad)
    assert not marker.exists()


def test_mismatched_weights_raise_with_the_keys(tmp_path: Path) -> None:
    path = tmp_path / "tiny.safetensors"
    state = create_model("vit_p8_w32_d2", num_classes=2, img_size=32, pos_enc="pope").state_dict()
    state["extra.weight"] = torch.zeros(1)
    save_file(state, str(path))
    with pytest.raises(RuntimeError, match=re.escape("unexpected ['extra.weight']")):
        create_model("vit_p8_w32_d2", num_classes=2, img_size=32, pos_enc="pope", pretrained=path)
    with pytest.raises(RuntimeError, match="missing"):
        create_model("vit_p8_w32_d2", num_classes=2, img_size=32, pos_enc="rope_mixed", pretrained=path)


def test_own_checkpoint_round_trip(tmp_path: Path) -> None:
    src = create_model("vit_p8_w32_d2", num_classes=3, img_size=32, pos_enc="rel_bias").eval()
    path = tmp_path / "m.safetensors"
    save_file(src.state_dict(), str(path))
    dst = create_model("vit_p8_w32_d2", num_classes=3, img_size=32, pos_enc="rel_bias", pretrained=path).eval()
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x))


def test_missing_file_and_offline_hub_fail_fast(monkeypatch, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        create_model("deit_small", num_classes=4, pretrained=tmp_path / "nope.safetensors")
    monkeypatch.setenv("POPEVIT_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match=re.escape("pretrained='/path/to/weights.safetensors'")):
        create_model("deit_small", num_classes=4, pretrained="hub")
    assert time.perf_counter() - t0 < 10
    with pytest.raises(ValueError, match="no hub weights"):
        create_model("vit_p8_w32_d2", num_classes=4, img_size=32, pretrained="hub")


def _tiny_torchvision_vit(_name: str, *, num_classes: int, img_size: int) -> torch.nn.Module:
    """vit_b16's class (torchvision VisionTransformer) at toy size: its nn.MultiheadAttention path in milliseconds."""
    from popevit.models.baselines import TorchvisionViT

    dims = dict(num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64)
    return TorchvisionViT(img_size=img_size, num_classes=num_classes, in_chans=1, **dims)


CAPTURE_CASES = [("vit_p8_w32_d2", pe) for pe in list_pos_encs()] + [
    ("vit_p4_w128_d6", None),
    ("deit_small", None),
    ("deit_small_pope", None),
    ("torchvision_tiny", None),
    pytest.param("vit_b16", None, marks=pytest.mark.slow),
]


def _depth(model: torch.nn.Module) -> int:
    if hasattr(model, "blocks"):
        return len(model.blocks)
    return len(model.encoder.layers)


@pytest.mark.parametrize(("name", "pe"), CAPTURE_CASES)
def test_capture_attention(name: str, pe: str | None) -> None:
    kwargs = {"pos_enc": pe} if pe else {}
    build = _tiny_torchvision_vit if name == "torchvision_tiny" else create_model
    model = build(name, num_classes=3, img_size=32, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():  # torchvision zero-initialises its head, which would zero every gradient
            if p.dim() > 1 and not p.any():
                p.normal_(std=0.02)
    x = torch.randn(2, 1, 32, 48)
    with torch.no_grad():
        fused = model(x)
    with capture_attention(model) as rec:
        logits = model(x)
    torch.testing.assert_close(logits, fused, rtol=1e-4, atol=1e-5)  # explicit path == fused path
    p = {"vit_p8_w32_d2": 8, "vit_p4_w128_d6": 4}.get(name, 16)
    grid = (32 // p, 48 // p)
    n = rec.num_prefix_tokens + grid[0] * grid[1]
    assert rec.grid == grid and len(rec.attn) == _depth(model)
    for a in rec.attn:
        assert a.shape[0] == 2 and a.shape[2:] == (n, n) and a.shape[1] > 1  # per head, not averaged
        torch.testing.assert_close(a.sum(-1), torch.ones_like(a.sum(-1)))
    grads = torch.autograd.grad(logits[:, 0].sum(), rec.attn)  # attached: gradient rollout works
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert rec.pool in ("cls", "mean")
    # restored: no recorder left behind, the next forward records nothing
    with torch.no_grad():
        torch.testing.assert_close(model(x), fused)
    assert not any("forward" in vars(m) for m in model.modules())


def test_capture_attention_rejects_cnns() -> None:
    with pytest.raises(ValueError, match="ResNet18"), capture_attention(create_model("resnet18", num_classes=2)):
        pass
