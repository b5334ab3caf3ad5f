"""Phantoms: layout, masks, determinism, speed, variability, and no trivial global-statistic shortcut."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from PIL import Image

from popevit.data.phantoms import CLASSES, mask_path, render, synthesize


def test_layout_masks_and_metadata(phantom_root):
    rows = list(csv.DictReader((phantom_root / "metadata.csv").read_text().splitlines()))
    assert len(rows) == 48
    for c in CLASSES:
        files = sorted((phantom_root / c).glob("*.png"))
        assert len(files) == 12
        for f in files:
            m = mask_path(f)
            assert m is not None and m.parent.parent.name == "masks"
            mask = np.asarray(Image.open(m))
            assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
            assert (mask.sum() == 0) == (c == "notumor")
    assert mask_path(phantom_root / "metadata.csv") is None


def test_same_seed_same_files_different_seed_differs(tmp_path):
    a = synthesize(tmp_path / "a", per_class=2, size=48, seed=3)
    b = synthesize(tmp_path / "b", per_class=2, size=48, seed=3)
    c = synthesize(tmp_path / "c", per_class=2, size=48, seed=4)
    name = "glioma/glioma_0001.png"
    assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / name).read_bytes() != (c / name).read_bytes()


def test_random_sizes_modes_and_polarity_vary():
    sized = [render("notumor", np.random.default_rng((0, 2, i)), None)[2] for i in range(6)]
    assert len({(i["width"], i["height"]) for i in sized}) > 2
    infos = [render("notumor", np.random.default_rng((0, 2, i)), 32)[2] for i in range(24)]
    assert len({i["bright_background"] for i in infos}) == 2
    assert len({i["weighting"] for i in infos}) >= 2


def test_lesion_inside_head_and_class_specific_size():
    areas = {}
    for c in ("glioma", "meningioma", "pituitary"):
        areas[c] = np.mean([render(c, np.random.default_rng((1, 0, i)), 96)[1].mean() for i in range(8)])
        assert areas[c] > 0
    assert areas["pituitary"] < areas["glioma"]  # small sellar mass vs large intra-axial mass


def test_global_statistics_do_not_separate_classes(tmp_path):
    """Logistic regression on (width, height, mean, std) stays near chance (0.25)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    root = synthesize(tmp_path / "p", per_class=40, size=48, seed=0)
    x, y = [], []
    for c in CLASSES:
        for f in sorted((root / c).glob("*.png")):
            a = np.asarray(Image.open(f).convert("L"), np.float32)
            x.append([a.shape[1], a.shape[0], a.mean(), a.std()])
            y.append(c)
    acc = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), x, y, cv=5).mean()
    assert acc < 0.4, acc


@pytest.mark.slow
def test_global_statistics_random_sizes(tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    root = synthesize(tmp_path / "p", per_class=40, size=None, seed=1)
    x, y = [], []
    for c in CLASSES:
        for f in sorted((root / c).glob("*.png")):
            a = np.asarray(Image.open(f).convert("L"), np.float32)
            x.append([a.shape[1], a.shape[0], a.mean(), a.std()])
            y.append(c)
    acc = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)), x, y, cv=5).mean()
    assert acc < 0.4, acc
