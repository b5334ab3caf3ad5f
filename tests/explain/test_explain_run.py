"""explain_run end to end on a hand-built run folder, mask geometry, and the CLI command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from popevit.artifact import ModelMeta, save_artifact
from popevit.config import PreprocessConfig
from popevit.data.dataset import ImageDataset
from popevit.data.decode import load_image, to_gray
from popevit.data.preprocess import preprocess_image, rescale_uint8
from popevit.explain import explain_run
from popevit.explain.explain import geometry, load_item, preprocess_mask
from popevit.models import create_model

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = PreprocessConfig(img_size=32)
    kwargs = {"num_classes": 4, "in_chans": 1, "img_size": 32, "pos_enc": "rope_axial"}
    model = create_model("vit_p8_w32_d2", **kwargs)
    return save_artifact(model, ModelMeta("vit_p8_w32_d2", kwargs, CLASSES, cfg), tmp_path_factory.mktemp("run"))


def _rectangular_phantom(phantom_root: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A phantom pasted off-centre into a wider canvas, with its mask moved alike: crop and pad both matter."""
    src = phantom_root / "glioma" / "glioma_0003.png"
    img = np.asarray(Image.open(src).convert("L"))
    mask = np.asarray(Image.open(phantom_root / "masks" / "glioma" / "glioma_0003.png"))
    canvas, mcanvas = np.zeros((80, 130), np.uint8), np.zeros((80, 130), np.uint8)
    canvas[10:74, 50:114], mcanvas[10:74, 50:114] = img, mask
    (tmp_path / "glioma").mkdir()
    (tmp_path / "masks" / "glioma").mkdir(parents=True)
    Image.fromarray(canvas).save(tmp_path / "glioma" / "wide.png")
    Image.fromarray(mcanvas).save(tmp_path / "masks" / "glioma" / "wide.png")
    return tmp_path / "glioma" / "wide.png", tmp_path / "masks" / "glioma" / "wide.png"


@pytest.mark.parametrize("crop", [True, False])
def test_mask_geometry_is_the_image_geometry(phantom_root, tmp_path, crop):
    cfg = PreprocessConfig(img_size=32, crop_foreground=crop)
    path, mpath = _rectangular_phantom(phantom_root, tmp_path)
    img = load_image(path)
    gray = to_gray(img)
    # The geometry reproduces the data layer's preprocessing exactly (guards against drift between the two).
    geo = geometry(gray, cfg)
    assert geo.box != (0, 0, *gray.shape) if crop else geo.box == (0, 0, *gray.shape)
    again = rescale_uint8(geo.apply(gray, geo.fill), cfg.clip_percentiles)
    np.testing.assert_array_equal(again, preprocess_image(img, cfg))
    mask = preprocess_mask(img, Image.open(mpath), cfg)
    assert mask.shape == (32, 32) and 0 < mask.mean() < 0.3
    # The lesion is the bright/abnormal blob: its pixels differ from the rest of the preprocessed head.
    pre = preprocess_image(img, cfg).astype(float)
    assert abs(pre[mask].mean() - pre[~mask & (pre > 20)].mean()) > 5


def test_load_item_sees_the_pixels_training_sees(tmp_path):
    """A 512 px JPEG is decoded at a draft scale by the training cache; explanations must use the same pixels."""
    cfg = PreprocessConfig(img_size=64)
    yy, xx = np.mgrid[:512, :512]
    head = ((yy - 250) / 200) ** 2 + ((xx - 260) / 170) ** 2 < 1
    lesion = (np.abs(yy - 200) < 30) & (np.abs(xx - 300) < 40)
    texture = np.random.default_rng(0).normal(0, 25, (512, 512))
    img = np.clip(np.where(head, 110 + texture, 5) + 90 * lesion, 0, 255).astype(np.uint8)
    (tmp_path / "glioma").mkdir()
    (tmp_path / "masks" / "glioma").mkdir(parents=True)
    path = tmp_path / "glioma" / "scan.jpg"
    Image.fromarray(img).save(path, quality=90)
    Image.fromarray(lesion.astype(np.uint8) * 255).save(tmp_path / "masks" / "glioma" / "scan.jpg", format="PNG")
    item = load_item(path, 0, cfg)
    np.testing.assert_array_equal(item.pre, ImageDataset([path], [0], cfg, cache_dir=tmp_path / "c").array(0))
    assert item.original.shape == (512, 512) and item.mask.shape == (64, 64)
    pre = item.pre.astype(float)
    assert 0.02 < item.mask.mean() < 0.1 and pre[item.mask].mean() > pre[~item.mask & (pre > 20)].mean() + 40


def test_explain_run_writes_overlays_galleries_table_maps_and_faithfulness(vit_run, phantom_root, tmp_path):
    out = tmp_path / "explain"
    images = [phantom_root / c / f"{c}_000{i}.png" for c in CLASSES for i in range(2)]
    result = explain_run(vit_run, images=images, method="all", out=out, faithfulness=True, max_images=4, steps=4)
    assert result.methods == ["grad-rollout", "gradcam", "rollout"]
    assert len(result.paths) == 4
    assert len(list((out / "overlays").glob("*.png"))) == 4
    for name in ("gallery_misclassified.png", "gallery_confident.png", "explanations.csv", "maps.npz"):
        assert (out / name).is_file(), name
    maps = np.load(out / "maps.npz")
    assert maps["rollout"].shape == (4, 32, 32) and maps["grad_rollout"].shape == (4, 32, 32)
    rows = (out / "explanations.csv").read_text().splitlines()
    assert rows[0].startswith("path,label,predicted,target,p_glioma") and len(rows) == 5
    f = json.loads((out / "faithfulness.json").read_text())
    assert set(f["methods"]) == {"grad-rollout", "gradcam", "rollout"}
    for v in [*f["methods"].values(), f["random"]]:
        assert 0 <= v["deletion_auc"] <= 1 and 0 <= v["insertion_auc"] <= 1
    assert f["mask"] is not None and 0 < f["mask"]["area_fraction"] < 0.5
    assert set(f["mask"]["methods"]) == {"grad-rollout", "gradcam", "rollout", "random"}
    with Image.open(out / "gallery_confident.png") as im:
        assert im.size[0] > 300 and im.size[1] > 300


def test_targets_and_errors_name_the_fix(vit_run, phantom_root, tmp_path):
    img = phantom_root / "meningioma" / "meningioma_0001.png"
    r = explain_run(vit_run, images=[img], method="grad-rollout", target="pituitary", out=tmp_path / "a", max_images=1)
    assert (tmp_path / "a" / "explanations.csv").read_text().splitlines()[1].split(",")[3] == "pituitary"
    assert r.faithfulness is None
    with pytest.raises(ValueError, match="did you mean 'glioma'"):
        explain_run(vit_run, images=[img], target="gliom", out=tmp_path / "b")
    with pytest.raises(ValueError, match="did you mean 'rollout'"):
        explain_run(vit_run, images=[img], method="rolout", out=tmp_path / "c")
    loose = tmp_path / "loose.png"
    loose.write_bytes(img.read_bytes())
    with pytest.raises(ValueError, match="--target true needs labels"):
        explain_run(vit_run, images=[loose], target="true", out=tmp_path / "d")


def test_cli_explain_command(vit_run, phantom_root, tmp_path):
    import typer
    from typer.testing import CliRunner

    from popevit.cli.explain import explain

    app = typer.Typer()
    app.command()(explain)
    out = tmp_path / "cli"
    res = CliRunner().invoke(
        app, [str(vit_run), "--images", str(phantom_root / "glioma"), "--method", "rollout", "--out", str(out),
              "--max-images", "2", "--faithfulness"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "rollout" in res.output and "deletion AUC" in res.output and "mass in mask" in res.output
    assert (out / "faithfulness.json").is_file()
    bad = CliRunner().invoke(app, [str(tmp_path / "nope"), "--images", str(phantom_root / "glioma")])
    assert bad.exit_code == 2 and "not a finished popevit run" in bad.output
