"""Several sources in one split: partial labels, source-balanced sampling, and what evaluation makes of them."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from popevit.config import load_config
from popevit.data.datamodule import SourceBalancedSampler
from popevit.data.manifest import make_split, read_manifest
from popevit.data.phantoms import synthesize
from popevit.training import train
from popevit.training.module import ClassifierModule

KAGGLE = ["glioma", "meningioma", "notumor", "pituitary"]
TINY = [
    "model.name=vit_tiny",
    "model.pos_enc=pope",
    "data.preprocess.img_size=32",
    "data.batch_size=8",
    "optim.warmup_epochs=0",
    "train.progress_bar=false",
    "train.threads=1",
    "train.patience=null",
    "train.accelerator=cpu",
    "train.precision='32'",
]


@pytest.fixture(scope="module")
def binary_root(tmp_path_factory, phantom_root) -> Path:
    """A Br35H-like yes/no set: new phantoms (another seed) plus two exact copies of the 4-class set's notumor."""
    other = synthesize(tmp_path_factory.mktemp("other") / "data", per_class=6, size=64, seed=7)
    root = tmp_path_factory.mktemp("binary")
    for cls in KAGGLE:
        dest = root / ("no" if cls == "notumor" else "yes")
        dest.mkdir(exist_ok=True)
        for f in sorted((other / cls).glob("*.png"))[: 6 if cls == "notumor" else 2]:
            shutil.copy(f, dest / f"{cls}_{f.name}")
    for f in sorted((phantom_root / "notumor").glob("*.png"))[:2]:
        shutil.copy(f, root / "no" / f"copy_{f.name}")
    return root


@pytest.fixture(scope="module")
def joint(tmp_path_factory, phantom_root, binary_root) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("split")
    base = make_split(phantom_root, folder / "base.csv", seed=0, ratios=(0.5, 0.25, 0.25))
    out = make_split(phantom_root, folder / "joint.csv", seed=0, ratios=(0.5, 0.25, 0.25), extra={"yesno": binary_root},
                     source_name="phantoms", base=base)  # fmt: skip
    return base, out


def test_joint_split_keeps_the_base_splits_and_groups_duplicates_across_sources(joint, binary_root):
    base, out = read_manifest(joint[0]), read_manifest(joint[1])
    assert out.classes == KAGGLE and out.label_sets == {"tumor": ["glioma", "meningioma", "pituitary"]}
    assert out.sources == ["phantoms", "yesno"]
    kept = {r.path: (r.split, r.group) for r in base.rows}
    assert all(kept[r.path] == (r.split, r.group) for r in out.rows if r.source == "phantoms")
    rows = {r.path.name: r for r in out.rows if r.source == "yesno"}
    assert Counter(r.label for r in rows.values()) == {"notumor": 8, "tumor": 6}
    for name, r in rows.items():  # an exact copy joins the group (and split) of its original
        if name.startswith("copy_"):
            original = next(b for b in base.rows if b.path.name == name[len("copy_") :])
            assert (r.split, r.group) == (original.split, original.group)
    assert "source" not in joint[0].read_text().splitlines()[0]  # a single-source manifest keeps its columns
    assert joint[1].read_text().splitlines()[0].endswith(",source")


def test_base_must_list_every_image(phantom_root, binary_root, tmp_path, joint):
    with pytest.raises(ValueError, match=r"does not list .* image\(s\)"):
        make_split(binary_root, tmp_path / "x.csv", base=joint[0])


def test_partial_loss_is_torch_cross_entropy_for_full_labels_and_the_marginal_for_partial_ones():
    torch.manual_seed(0)
    kw = {"num_classes": 4, "in_chans": 1, "img_size": 32, "pos_enc": "none"}
    weights = [0.5, 1.0, 1.5, 1.0]
    optim = {"label_smoothing": 0.1}
    partial = ClassifierModule("vit_tiny", kw, KAGGLE, optim, weights, label_sets=[[0, 1, 3]])
    plain = ClassifierModule("vit_tiny", kw, KAGGLE, optim, weights)
    logits = torch.randn(6, 4)
    y = torch.tensor([0, 1, 2, 3, 2, 0])
    assert torch.allclose(partial._loss(logits, y), plain._loss(logits, y), atol=1e-6)
    no_smoothing = ClassifierModule("vit_tiny", kw, KAGGLE, {}, None, label_sets=[[0, 1, 3]])
    tumour = torch.full((6,), 4)  # every image "one of the tumour types"
    expected = -torch.log(1 - F.softmax(logits, -1)[:, 2]).mean()
    assert torch.allclose(no_smoothing._loss(logits, tumour), expected, atol=1e-6)
    # a partial label does not care how the tumour probability splits between the types
    moved = logits.clone()
    moved[:, [0, 1]] = moved[:, [1, 0]]
    assert torch.allclose(no_smoothing._loss(moved, tumour), no_smoothing._loss(logits, tumour), atol=1e-6)


def test_partial_labels_refuse_mixup():
    kw = {"num_classes": 4, "in_chans": 1, "img_size": 32, "pos_enc": "none"}
    with pytest.raises(ValueError, match="mixup/cutmix"):
        ClassifierModule("vit_tiny", kw, KAGGLE, {}, None, mix={"mixup": 0.8}, label_sets=[[0, 1, 3]])


def test_source_balanced_sampler_draws_each_source_equally_and_repeats_per_epoch():
    sources = ["big"] * 900 + ["small"] * 100
    s = SourceBalancedSampler(sources, seed=3)
    s.set_epoch(0)
    first = list(s)
    drawn = Counter(sources[i] for i in first)
    assert len(first) == 1000 and abs(drawn["small"] - 500) < 60
    assert list(s) == first
    s.set_epoch(1)
    assert list(s) != first


def test_training_on_two_sources_then_evaluating_each(joint, tmp_path):
    from popevit.evaluation.evaluate import evaluate_run
    from popevit.evaluation.plots import read_metrics_csv

    cfg = load_config(None, [*TINY, "train.max_epochs=1", f"data.manifest={joint[1]}", "data.sampling=source_balanced"])
    run = train(cfg, tmp_path / "run").out_dir
    logged = read_metrics_csv(run / "logs" / "csv" / "metrics.csv")
    assert any(np.isfinite(v) for _, v in logged.get("val/tumor_auroc", [])), sorted(logged)
    inner = evaluate_run(run, source_name="phantoms", n_boot=20, device="cpu", plots=False)
    assert inner["classes"] == KAGGLE and not inner["source"]["external"]
    held_out = evaluate_run(run, source_name="yesno", label_map="glioma|meningioma|pituitary=tumor", n_boot=20,
                            device="cpu", plots=False)  # fmt: skip
    n_test = sum(r.source == "yesno" and r.split == "test" for r in read_manifest(joint[1]).rows)
    assert held_out["classes"] == ["notumor", "tumor"] and held_out["n"] == n_test
    assert held_out["out"].endswith("eval/test-yesno")
    with pytest.raises(ValueError, match=r"mapped|label map"):
        evaluate_run(run, n_boot=20, device="cpu", plots=False)  # 'tumor' rows need a map onto the model's classes
