from __future__ import annotations

import pytest
import torch
from torchvision.models.resnet import BasicBlock

from popevit.config import ModelConfig
from popevit.models import create_model
from popevit.models.stem import STEMS, ResStem


def test_every_stem_is_a_config_choice():
    assert set(STEMS) == set(ModelConfig.model_fields["stem"].annotation.__args__[0].__args__)


@pytest.mark.parametrize("stem", sorted(STEMS))
@pytest.mark.parametrize("pos_enc", ["pope", "rope_axial", "learnable"])
def test_every_stem_keeps_the_token_grid_and_trains(stem, pos_enc):
    torch.manual_seed(0)
    model = create_model("vit_p8_w32_d2", num_classes=3, img_size=32, pos_enc=pos_enc, stem=stem)
    x = torch.randn(2, 1, 32, 48)  # non-square input: the grid must follow it
    assert model.patch_embed(x).shape == (2, 32, 4, 6)
    model(x).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_res_stem_is_resnet_stages_at_doubling_widths():
    stem = ResStem(in_chans=1, embed_dim=192, patch_size=16)
    blocks = [m for m in stem.modules() if isinstance(m, BasicBlock)]
    assert [(b.conv1.in_channels, b.conv2.out_channels, b.conv1.stride) for b in blocks] == [
        (32, 64, (2, 2)),
        (64, 128, (2, 2)),
        (128, 192, (2, 2)),
    ]
    assert stem(torch.randn(1, 1, 128, 128)).shape == (1, 192, 8, 8)
    # a residual stem is a deeper tokeniser than the plain one: more parameters, same grid
    plain = STEMS["conv"](1, 192, 16)
    assert sum(p.numel() for p in stem.parameters()) > sum(p.numel() for p in plain.parameters())


@pytest.mark.parametrize("stem", ["conv", "res"])
def test_conv_stems_reject_what_they_cannot_build(stem):
    with pytest.raises(ValueError, match=f"the {stem} stem needs a power-of-two patch size"):
        create_model("vit_p8_w32_d2", num_classes=3, img_size=24, patch_size=6, stem=stem)
    with pytest.raises(ValueError, match="applies to popevit ViT presets only"):
        create_model("resnet18", num_classes=3, stem=stem)
