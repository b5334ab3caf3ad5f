from __future__ import annotations

import pytest
import torch

from popevit.models import create_model


@pytest.mark.parametrize("pos_enc", ["pope", "rope_axial", "learnable"])
def test_conv_stem_keeps_the_token_grid_and_trains(pos_enc):
    patch = create_model("vit_tiny", num_classes=3, img_size=32, pos_enc=pos_enc, stem="patch")
    conv = create_model("vit_tiny", num_classes=3, img_size=32, pos_enc=pos_enc, stem="conv")
    x = torch.randn(2, 1, 32, 48)  # non-square input: the grid must follow it
    assert patch.patch_embed(x).shape == conv.patch_embed(x).shape == (2, 32, 4, 6)
    conv(x).sum().backward()
    assert all(p.grad is not None for p in conv.parameters())


def test_conv_stem_rejects_what_it_cannot_build():
    with pytest.raises(ValueError, match="power-of-two patch size"):
        create_model("vit_tiny", num_classes=3, img_size=24, patch_size=6, stem="conv")
    with pytest.raises(ValueError, match="applies to popevit ViT presets only"):
        create_model("resnet18", num_classes=3, stem="conv")
