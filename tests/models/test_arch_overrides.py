"""Width, depth, heads and MLP overrides of the ViT presets (`model.embed_dim` ... in a config)."""

from __future__ import annotations

import pytest
import torch

from popevit.artifact import load_artifact
from popevit.config import load_config
from popevit.models import create_model
from popevit.models.presets import PRESETS
from popevit.training import train
from popevit.training.run import model_kwargs


def _shape(model) -> tuple[int, int, int, int]:
    """(token width, blocks, heads, MLP hidden width) of a built ViT, read from its modules."""
    block = model.blocks[0]
    return block.norm1.normalized_shape[0], len(model.blocks), block.attn.num_heads, block.mlp.fc1.out_features


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_one_more_head_and_block_keeps_head_width_and_mlp_ratio_and_trains(name):
    base = PRESETS[name]
    head_dim = base.embed_dim // base.num_heads
    width = base.embed_dim + head_dim
    side = 2 * base.patch_size
    torch.manual_seed(0)
    kw = {"num_classes": 3, "img_size": side, "pos_enc": "rope_axial"}
    model = create_model(name, **kw, embed_dim=width, depth=base.depth + 1)
    assert _shape(model) == (width, base.depth + 1, base.num_heads + 1, base.mlp_dim * width // base.embed_dim)
    preset = create_model(name, **kw)
    assert _shape(preset) == (base.embed_dim, base.depth, base.num_heads, base.mlp_dim)  # unset = the preset's
    out = model(torch.randn(2, 1, side, side))
    assert out.shape == (2, 3)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_explicit_heads_and_mlp_win_over_the_derived_ones():
    model = create_model("vit_p16_w192_d6", num_classes=4, img_size=32, embed_dim=256, num_heads=8, mlp_dim=1024)
    assert _shape(model) == (256, 6, 8, 1024)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"embed_dim": 200}, r"embed_dim=200 is not a multiple of vit_p16_w192_d6's head width 64; set num_heads too"),
        ({"embed_dim": 256, "num_heads": 3}, r"embed_dim=256 is not divisible by num_heads=3"),
    ],
)
def test_widths_that_do_not_split_into_heads_are_refused_with_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create_model("vit_p16_w192_d6", num_classes=4, img_size=32, **kwargs)


@pytest.mark.parametrize("key", ["embed_dim", "depth", "num_heads", "mlp_dim"])
def test_baselines_refuse_architecture_overrides(key):
    with pytest.raises(ValueError, match=rf"model 'resnet18' does not support {key}=8; leave it unset for this model"):
        create_model("resnet18", num_classes=4, **{key: 8})


def test_a_config_override_reaches_the_trained_and_reloaded_model(phantom_root, tmp_path):
    over = ["model.name=vit_p8_w32_d2", "data.preprocess.img_size=32", "data.batch_size=8", "train.max_epochs=1",
            "train.progress_bar=false", "train.threads=1", f"data.data={phantom_root}",
            "model.embed_dim=48", "model.depth=3", "model.fc_norm=true"]  # fmt: skip
    cfg = load_config(None, over)
    assert {"embed_dim": 48, "depth": 3, "fc_norm": True}.items() <= model_kwargs(cfg, 4).items()
    result = train(cfg, tmp_path / "run")
    model, meta = load_artifact(result.out_dir)  # what evaluate, explain and archive rebuild from
    assert _shape(model) == (48, 3, 3, 96)
    assert meta.kwargs["embed_dim"] == 48 and meta.kwargs["depth"] == 3 and model.cfg.fc_norm
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        load_config(None, ["model.depth=0"])


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_fc_norm_normalises_the_pooled_feature_instead_of_every_token(pool):
    torch.manual_seed(0)
    plain = create_model("vit_p8_w32_d2", num_classes=4, img_size=32, pool=pool).eval()
    fc = create_model("vit_p8_w32_d2", num_classes=4, img_size=32, pool=pool, fc_norm=True).eval()
    fc.load_state_dict(plain.state_dict())  # the same parameters: only where the LayerNorm sits differs
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        tokens = fc.forward_features(x)  # not normalised
        pooled = tokens[:, 0] if pool == "cls" else tokens.mean(dim=1)
        assert torch.allclose(fc(x), fc.head(fc.norm(pooled)), atol=1e-6)
        assert torch.allclose(plain.forward_features(x), plain.norm(tokens), atol=1e-6)
        if pool == "cls":  # one token: normalising it before or after "pooling" is the same
            assert torch.allclose(fc(x), plain(x), atol=1e-6)
        else:
            assert not torch.allclose(fc(x), plain(x), atol=1e-4)


def test_baselines_refuse_fc_norm():
    with pytest.raises(ValueError, match=r"model 'resnet18' does not support fc_norm=True"):
        create_model("resnet18", num_classes=4, fc_norm=True)
