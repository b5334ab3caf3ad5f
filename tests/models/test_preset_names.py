"""Presets are named by shape; the names they had before still load the artefacts that record them."""

from __future__ import annotations

import json
import re

import pytest
import torch

from popevit.artifact import META, ModelMeta, load_artifact, save_artifact
from popevit.config import PreprocessConfig
from popevit.models import create_model, list_models
from popevit.models.presets import FORMER_NAMES, PRESETS


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_name_states_its_patch_width_and_depth(name):
    cfg = PRESETS[name]
    m = re.fullmatch(r"vit_p(\d+)_w(\d+)_d(\d+)(_conv)?", name)
    assert m, name
    assert (int(m[1]), int(m[2]), int(m[3]), bool(m[4])) == (
        cfg.patch_size,
        cfg.embed_dim,
        cfg.depth,
        cfg.stem == "conv",
    )


@pytest.mark.parametrize("old", sorted(FORMER_NAMES))
def test_a_former_name_builds_the_same_model_and_is_not_listed(old):
    new = FORMER_NAMES[old]
    assert old not in list_models() and new in list_models()
    size = PRESETS[new].img_size
    torch.manual_seed(0)
    a = create_model(old, num_classes=3, img_size=size, pos_enc="rope_axial")
    torch.manual_seed(0)
    b = create_model(new, num_classes=3, img_size=size, pos_enc="rope_axial")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_an_artefact_that_records_a_former_name_loads(tmp_path):
    model = create_model("vit_p8_w32_d2", num_classes=2, img_size=32, pos_enc="pope").eval()
    kwargs = {"num_classes": 2, "img_size": 32, "pos_enc": "pope"}
    save_artifact(model, ModelMeta("vit_tiny", kwargs, ["a", "b"], PreprocessConfig(img_size=32)), tmp_path)
    assert json.loads((tmp_path / META).read_text())["model"]["name"] == "vit_tiny"
    loaded, meta = load_artifact(tmp_path)
    x = torch.randn(2, 1, 32, 32)
    assert meta.name == "vit_tiny" and torch.equal(loaded(x), model(x))
