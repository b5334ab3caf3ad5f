"""Cross-dataset evaluation: label maps between a model's classes and another data set's classes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from popevit.artifact import ModelMeta, save_artifact
from popevit.config import PreprocessConfig
from popevit.evaluation.evaluate import evaluate_run
from popevit.evaluation.labelmap import LabelMapError, parse_label_map, resolve_label_map
from popevit.evaluation.metrics import point_metrics

KAGGLE = ["glioma", "meningioma", "notumor", "pituitary"]
BR35H_MAP = "yes=tumor,no=notumor,glioma|meningioma|pituitary=tumor"


def test_collapse_sums_the_tumour_classes():
    lmap = resolve_label_map(parse_label_map(BR35H_MAP), KAGGLE, ["no", "yes"])
    assert lmap.targets == ["notumor", "tumor"] and lmap.data == {"no": "notumor", "yes": "tumor"}
    p = np.array([[0.3, 0.3, 0.4, 0.0], [0.1, 0.0, 0.8, 0.1]])
    np.testing.assert_allclose(lmap.collapse(p, KAGGLE), [[0.4, 0.6], [0.8, 0.2]])
    assert not lmap.identity
    # collapsed arg-max, not the arg-max class mapped: the first image is a tumour at 0.6 although notumor is the top
    assert lmap.collapse(p, KAGGLE).argmax(1).tolist() == [1, 0]


def test_glob_patterns_and_identity():
    lmap = resolve_label_map(parse_label_map("*oma|pituitary=tumor,yes=tumor,no=notumor"), KAGGLE, ["no", "yes"])
    assert lmap.model == {"glioma": "tumor", "meningioma": "tumor", "notumor": "notumor", "pituitary": "tumor"}
    subset = resolve_label_map((), KAGGLE, ["glioma", "notumor"])
    assert subset.identity and subset.targets == KAGGLE


@pytest.mark.parametrize(
    ("rules", "data", "message"),
    [
        (
            "",
            ["no", "yes"],
            r"\['no', 'yes'\] are not among the model's classes.*--label-map 'yes=tumor,no=notumor,"
            r"glioma\|meningioma\|pituitary=tumor'",
        ),
        ("yes=tumor,no=notumor", ["no", "yes"], r"\['yes'\] map to no target that the model predicts"),
        ("gliomaa=tumor", KAGGLE, r"'gliomaa' matches no class.*did you mean 'glioma'"),
        ("*=tumor,no=notumor", ["no", "yes"], r"class 'no' is mapped to several targets"),
        ("yes", ["no", "yes"], r"is not PATTERN=TARGET"),
        ("=tumor", ["no", "yes"], r"empty class name"),
        ("", ["glioma", "oligodendroglioma"], r"\['oligodendroglioma'\] are not among the model's classes"),
    ],
)
def test_bad_maps_name_the_classes_and_the_fix(rules, data, message):
    with pytest.raises(LabelMapError, match=message):
        resolve_label_map(parse_label_map(rules), KAGGLE, data)


def test_binary_metrics_after_collapse():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]])
    m = point_metrics(y, p, ["notumor", "tumor"])
    assert m["tumor_sensitivity"] == pytest.approx(2 / 3) and m["tumor_specificity"] == pytest.approx(0.5)
    assert m["tumor_auroc"] == m["auroc/tumor"]


@pytest.fixture(scope="module")
def kaggle_run(tmp_path_factory, phantom_root) -> Path:
    """A 4-class tiny ViT whose own manifest lists half of the phantoms as training images."""
    from popevit.data import make_split
    from popevit.models import create_model

    run = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    pre = PreprocessConfig(img_size=32)
    kwargs = {"num_classes": 4, "in_chans": 1, "img_size": 32, "pos_enc": "pope"}
    save_artifact(create_model("vit_tiny", **kwargs), ModelMeta("vit_tiny", kwargs, KAGGLE, pre), run)
    make_split(phantom_root, run / "manifest.csv", seed=0, ratios=(0.5, 0.25, 0.25))
    return run


@pytest.fixture(scope="module")
def binary_set(tmp_path_factory, phantom_root, kaggle_run) -> Path:
    """A Br35H-like yes/no folder: two phantoms per class that the run trained on, and two it did not see."""
    import csv

    with open(kaggle_run / "manifest.csv") as f:
        train = {r["path"] for r in csv.DictReader(f) if r["split"] == "train"}
    root = tmp_path_factory.mktemp("br35h")
    for cls in KAGGLE:
        dest = root / ("no" if cls == "notumor" else "yes")
        dest.mkdir(exist_ok=True)
        files = sorted((phantom_root / cls).glob("*.png"))
        seen = [f for f in files if str(f.resolve()) in train][:2]
        unseen = [f for f in files if str(f.resolve()) not in train][:2]
        for f in seen + unseen:
            shutil.copy(f, dest / f"{cls}_{f.name}")
    return root


def test_external_evaluation_with_a_label_map(kaggle_run, binary_set, tmp_path):
    res = evaluate_run(kaggle_run, data=binary_set, label_map=BR35H_MAP, n_boot=50, device="cpu", plots=False,
                       out=tmp_path / "ev")  # fmt: skip
    assert res["classes"] == ["notumor", "tumor"] and res["model_classes"] == KAGGLE
    assert res["source"]["external"] and res["source"]["name"] == binary_set.name
    assert res["label_map"]["data"] == {"no": "notumor", "yes": "tumor"} and res["n"] == 16
    assert {"tumor_sensitivity", "tumor_specificity", "tumor_auroc"} <= set(res["metrics"])
    # by default the images the run trained on (exact copies) are reported apart: 8 of the 16
    assert res["dedup"]["n_exact_duplicates"] == 8 and res["dedup"]["n"] == 8
    header = (tmp_path / "ev" / "predictions.csv").read_text().splitlines()[0]
    assert header == "path,label,predicted,p_notumor,p_tumor"
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["label_map"]["rules"] == BR35H_MAP.split(",")


def test_external_evaluation_collapses_the_model_probabilities(kaggle_run, binary_set, tmp_path):
    """p_tumor in predictions.csv is the sum of the model's three tumour probabilities."""
    from popevit.artifact import load_artifact
    from popevit.data.dataset import ImageDataset
    from popevit.evaluation.predictions import Predictions, predict_proba

    evaluate_run(kaggle_run, data=binary_set, label_map=BR35H_MAP, n_boot=10, device="cpu", plots=False,
                 out=tmp_path / "ev", dedup=False)  # fmt: skip
    preds = Predictions.load(tmp_path / "ev" / "predictions.csv")
    model, meta = load_artifact(kaggle_run)
    raw = predict_proba(model, ImageDataset([Path(p) for p in preds.paths], [0] * len(preds.paths), meta.preprocess))
    np.testing.assert_allclose(preds.proba[:, 1], raw[:, [0, 1, 3]].sum(1), atol=1e-6)


def test_external_evaluation_without_a_map_names_the_fix(kaggle_run, binary_set):
    with pytest.raises(LabelMapError, match=r"--label-map 'yes=tumor,no=notumor,glioma\|meningioma\|pituitary=tumor'"):
        evaluate_run(kaggle_run, data=binary_set, n_boot=10, device="cpu", plots=False)


def test_cli_label_map_error_is_one_line(kaggle_run, binary_set):
    from typer.testing import CliRunner

    from popevit.cli.main import app

    result = CliRunner().invoke(app, ["evaluate", str(kaggle_run), "--data", str(binary_set), "--label-map",
                                      "yes=tumor,no=notumor"])  # fmt: skip
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "map to no target that the model predicts" in result.output


def test_compare_on_external_data_tests_sensitivity_and_reuses_predictions(kaggle_run, binary_set, tmp_path):
    from popevit.evaluation.compare import compare_runs, to_markdown
    from popevit.models import create_model

    other = tmp_path / "other-s0"
    torch.manual_seed(1)
    kwargs = {"num_classes": 4, "in_chans": 1, "img_size": 32, "pos_enc": "none"}
    meta = ModelMeta("vit_tiny", kwargs, KAGGLE, PreprocessConfig(img_size=32))
    save_artifact(create_model("vit_tiny", **kwargs), meta, other)
    shutil.copy(kaggle_run / "manifest.csv", other / "manifest.csv")
    kw = {"data": binary_set, "label_map": BR35H_MAP, "n_boot": 50, "device": "cpu"}
    result = compare_runs([[kaggle_run], [other]], **kw)
    tested = set(result["comparisons"][0]["paired_bootstrap"])
    assert tested == {"auroc_macro", "accuracy", "tumor_sensitivity", "tumor_specificity"}
    assert "tumor_sensitivity" in to_markdown(result) and result["classes"] == ["notumor", "tumor"]
    made = (other / "eval" / f"data-{binary_set.name}" / "metrics.json").stat().st_mtime_ns
    compare_runs([[kaggle_run], [other]], **kw)
    assert (other / "eval" / f"data-{binary_set.name}" / "metrics.json").stat().st_mtime_ns == made
