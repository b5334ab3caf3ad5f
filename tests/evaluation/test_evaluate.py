"""evaluate_run end to end on phantom data with a tiny random model saved as a run artefact."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from popevit.artifact import ModelMeta, save_artifact
from popevit.config import PreprocessConfig
from popevit.evaluation.describe import model_label, source_label
from popevit.evaluation.evaluate import ClassMismatchError, evaluate_run
from popevit.evaluation.metrics import metric_names, point_metrics
from popevit.evaluation.predictions import Predictions

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
PRE = PreprocessConfig(img_size=32)


def _make_run(run: Path, classes: list[str], manifest_src: Path | None = None) -> Path:
    from popevit.models import create_model

    torch.manual_seed(0)
    kwargs = {"num_classes": len(classes), "in_chans": 1, "img_size": 32, "pos_enc": "pope"}
    save_artifact(create_model("vit_p8_w32_d2", **kwargs), ModelMeta("vit_p8_w32_d2", kwargs, classes, PRE), run)
    if manifest_src is not None:
        (run / "manifest.csv").write_bytes(manifest_src.read_bytes())
    return run


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def manifest(phantom_root, tmp_path_factory, cache) -> Path:
    from popevit.data import make_split

    out = tmp_path_factory.mktemp("split") / "manifest.csv"
    return make_split(phantom_root, out, seed=0, ratios=(0.5, 0.25, 0.25), cache_dir=cache)


@pytest.fixture(scope="module")
def run(tmp_path_factory, manifest) -> Path:
    return _make_run(tmp_path_factory.mktemp("runs") / "tiny-s0", CLASSES, manifest)


def _split_rows(manifest: Path, split: str) -> list[dict[str, str]]:
    with open(manifest, newline="") as f:
        return [r for r in csv.DictReader(f) if r["split"] == split]


def test_evaluate_cli_default_test_split(run, manifest, cache, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from popevit.cli.evaluate import evaluate

    monkeypatch.setenv("POPEVIT_CACHE", str(cache))
    app = typer.Typer()
    app.command()(evaluate)
    cli = CliRunner().invoke(app, [str(run), "--n-boot", "200", "--device", "cpu"])
    assert cli.exit_code == 0, cli.output
    assert "auroc_macro" in cli.output and "eval/test/predictions.csv" in cli.output
    out = run / "eval" / "test"
    rows = _split_rows(manifest, "test")
    with open(out / "predictions.csv", newline="") as f:
        pred_rows = list(csv.DictReader(f))
    assert list(pred_rows[0]) == ["path", "label", "predicted", *[f"p_{c}" for c in CLASSES]]
    assert sorted(r["path"] for r in pred_rows) == sorted(str(Path(r["path"])) for r in rows)
    for r in pred_rows:
        p = np.array([float(r[f"p_{c}"]) for c in CLASSES])
        assert p.sum() == pytest.approx(1, abs=1e-5) and r["predicted"] == CLASSES[int(p.argmax())]
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["n"] == len(rows) and saved["bootstrap"] == {
        "method": "percentile",
        "level": 0.95,
        "n_boot": 200,
        "seed": 0,
        "unit": "image",
    }
    assert list(saved["metrics"]) == metric_names(CLASSES) and "tumor_sensitivity" in saved["metrics"]
    # named by the folder that holds the class folders, not by the run's manifest.csv
    assert source_label(saved["source"]) == f"test split of {Path(rows[0]['path']).parent.parent.name}"
    for name in ("accuracy", "auroc_macro", "log_loss", "ece", "tumor_specificity"):
        m = saved["metrics"][name]
        assert m["lo"] <= m["value"] <= m["hi"] or name in ("ece", "log_loss")
    for png in saved["plots"].values():
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # the metrics are those of the saved predictions
    preds = Predictions.load(out / "predictions.csv")
    assert saved["metrics"]["accuracy"]["value"] == pytest.approx(
        point_metrics(preds.y, preds.proba, CLASSES)["accuracy"]
    )


def test_dataset_name_is_the_folder_of_the_class_folders():
    from popevit.evaluation.source import dataset_name

    assert dataset_name(["/d/phantoms/glioma/a.png", "/d/phantoms/notumor/b.png"]) == "phantoms"
    kaggle, br35h = "/s/brain-tumor-mri/Training/glioma/a.jpg", "/s/br35h/yes/y1.jpg"
    assert dataset_name([kaggle, br35h]) == "br35h + brain-tumor-mri/Training"  # a split folder keeps its parent
    many = [f"/s/set{i}/glioma/a.png" for i in range(5)]
    assert dataset_name(many) == "set0 + set1 + set2 + 2 more"


def test_predictions_equal_direct_forward_and_tta(run, manifest, cache):
    from popevit.artifact import load_artifact
    from popevit.data.dataset import ImageDataset

    res = evaluate_run(
        run, manifest=manifest, split="val", tta=True, n_boot=50, cache_dir=cache, device="cpu", plots=False
    )
    assert Path(res["out"]).name == "manifest-val-tta"
    preds = Predictions.load(Path(res["out"]) / "predictions.csv")
    model, meta = load_artifact(run)
    ds = ImageDataset([Path(p) for p in preds.paths[:4]], preds.y[:4].tolist(), meta.preprocess, cache_dir=cache)
    x = torch.stack([ds[i][0] for i in range(4)])
    with torch.no_grad():
        ref = (model(x).softmax(-1) + model(torch.flip(x, dims=[3])).softmax(-1)) / 2
        plain = model(x).softmax(-1)
    np.testing.assert_allclose(preds.proba[:4], ref.numpy(), atol=1e-6)
    assert not np.allclose(preds.proba[:4], plain.numpy(), atol=1e-6)  # the flip really changes the input


def test_evaluate_data_folder_with_dedup(run, phantom_root, manifest, cache, tmp_path):
    res = evaluate_run(
        run,
        data=phantom_root,
        dedup_against=manifest,
        n_boot=50,
        out=tmp_path / "ev",
        cache_dir=cache,
        device="cpu",
        plots=False,
    )
    n_train = len(_split_rows(manifest, "train"))
    assert res["n"] == 48 and res["source"]["data"] == str(phantom_root)
    d = res["dedup"]
    # the splitter keeps duplicates in one split, so exactly the training images themselves are removed
    assert d["n_removed"] == n_train and d["n_exact_duplicates"] == n_train and d["n"] == 48 - n_train
    assert set(d["metrics"]) == set(res["metrics"])
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["dedup"]["n"] == d["n"]


def test_evaluate_official_layout(run, phantom_root, cache, tmp_path):
    import shutil

    for cls in CLASSES:  # a Kaggle-like root: Training/ and Testing/ with class folders
        for split in ("Training", "Testing"):
            (tmp_path / "kaggle" / split / cls).mkdir(parents=True)
        for i, img in enumerate(sorted((phantom_root / cls).glob("*.png"))[:3]):
            shutil.copy(img, tmp_path / "kaggle" / ("Testing" if i < 2 else "Training") / cls / img.name)
    res = evaluate_run(run, data=tmp_path / "kaggle", n_boot=20, cache_dir=cache, device="cpu", plots=False)
    assert res["n"] == 8 and res["source"]["split"] == "test" and res["out"].endswith("eval/data-kaggle-test")
    res = evaluate_run(run, data=tmp_path / "kaggle" / "Testing", n_boot=20, cache_dir=cache, device="cpu", plots=False)
    assert res["n"] == 8 and res["source"]["split"] is None and res["out"].endswith("eval/data-Testing")


def test_class_mismatch_refused(tmp_path, phantom_root, cache):
    run = _make_run(tmp_path / "binary", ["notumor", "tumor"])
    with pytest.raises(
        ClassMismatchError, match=r"are not among the model's classes.*glioma\|meningioma\|pituitary=tumor"
    ):
        evaluate_run(run, data=phantom_root, n_boot=10, cache_dir=cache, device="cpu")
    with pytest.raises(FileNotFoundError, match=r"manifest\.csv"):
        evaluate_run(run, n_boot=10, cache_dir=cache, device="cpu")


def test_validation_split_reproduces_training_metrics(manifest, cache, tmp_path, monkeypatch):
    """Evaluating the best checkpoint on its validation split gives the validation metrics logged by training."""
    from popevit.config import ExperimentConfig
    from popevit.training import train

    monkeypatch.setenv("POPEVIT_CACHE", str(cache))
    cfg = ExperimentConfig.model_validate(
        {
            "name": "tiny",
            "data": {
                "manifest": str(manifest),
                "batch_size": 8,
                "preprocess": {"img_size": 32},
                "augment": {"enabled": False},
            },
            "model": {"name": "vit_p8_w32_d2", "pos_enc": "pope"},
            "optim": {"class_weighted": False, "warmup_epochs": 0, "lr": 3e-3},
            "train": {
                "max_epochs": 2,
                "log_every_n_steps": 1,
                "accelerator": "cpu",
                "progress_bar": False,
                "patience": None,
                "threads": 1,
                "precision": "32",
            },
        }
    )
    run = tmp_path / "tiny"
    train(cfg, run)
    logged = json.loads((run / "val_metrics.json").read_text())
    res = evaluate_run(run, split="val", n_boot=20, cache_dir=cache, device="cpu", plots=False)
    m = {k: v["value"] for k, v in res["metrics"].items()}
    assert res["n"] == len(_split_rows(manifest, "val"))
    assert m["accuracy"] == pytest.approx(logged["val/acc"], abs=1e-6)
    assert m["balanced_accuracy"] == pytest.approx(logged["val/bacc"], abs=1e-6)
    assert m["f1_macro"] == pytest.approx(logged["val/f1_macro"], abs=1e-6)
    assert m["auroc_macro"] == pytest.approx(logged["val/auroc_macro"], abs=1e-5)
    assert m["log_loss"] == pytest.approx(logged["val/loss"], abs=1e-5)  # unweighted CE when class_weighted=False


def test_cached_predictions_are_reused_only_for_their_source_and_weights(manifest, cache, tmp_path):
    """``RUN/eval/<tag>`` keeps only a source's last path part: another manifest of the same file name, or retrained
    weights, must be evaluated again, not served the old predictions."""
    import os
    from functools import partial

    from popevit.artifact import ModelMeta, save_artifact
    from popevit.evaluation.prediction_cache import run_predictions, stale_predictions
    from popevit.evaluation.source import EvalSource
    from popevit.models import create_model

    run = _make_run(tmp_path / "tiny-s0", CLASSES, manifest)
    lines = manifest.read_text().splitlines(keepends=True)
    first_test = next(i for i, r in enumerate(lines) if ",test," in r)
    for name, text in (("a", lines), ("b", lines[:first_test] + lines[first_test + 1 :])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "split.csv").write_text("".join(text))
    kw = {"n_boot": 20, "cache_dir": cache, "device": "cpu", "plots": False}

    def on(name: str) -> EvalSource:
        return EvalSource(manifest=tmp_path / name / "split.csv", split="test")

    pa = run_predictions(run, on("a"), **kw)
    pb = run_predictions(run, on("b"), **kw)  # same folder: eval/split-test
    assert len(pb.paths) == len(pa.paths) - 1
    (tmp_path / "c").mkdir()  # a byte-identical copy of b (a run copied with its eval folder) is the same source
    (tmp_path / "c" / "split.csv").write_bytes((tmp_path / "b" / "split.csv").read_bytes())
    stale = partial(stale_predictions, run / "eval" / "split-test", run)
    assert stale(on("c")) is None
    assert "they were made on" in stale(on("a"))
    cached = run / "eval" / "split-test" / "predictions.csv"
    before = cached.stat().st_mtime_ns
    assert run_predictions(run, on("b"), **kw).paths == pb.paths
    assert cached.stat().st_mtime_ns == before  # nothing changed: reused
    torch.manual_seed(1)  # retrain: new weights in the same run folder
    kwargs = {"num_classes": 4, "in_chans": 1, "img_size": 32, "pos_enc": "pope"}
    save_artifact(create_model("vit_p8_w32_d2", **kwargs), ModelMeta("vit_p8_w32_d2", kwargs, CLASSES, PRE), run)
    pc = run_predictions(run, on("b"), **kw)
    assert pc.paths == pb.paths and not np.allclose(pc.proba, pb.proba)
    # records made before metrics.json held the weights' hash are judged by modification time
    record = json.loads((cached.parent / "metrics.json").read_text())
    del record["model"]["weights_sha256"]
    (cached.parent / "metrics.json").write_text(json.dumps(record))
    weights_time = (run / "model.safetensors").stat().st_mtime
    os.utime(cached, (weights_time + 5, weights_time + 5))
    run_predictions(run, on("b"), **kw)
    assert cached.stat().st_mtime == weights_time + 5  # newer than the weights: reused
    os.utime(cached, (weights_time - 5, weights_time - 5))
    run_predictions(run, on("b"), **kw)
    assert cached.stat().st_mtime > weights_time  # older than the weights: evaluated again


def test_file_sha256_reads_a_file_once_and_again_after_any_rewrite(tmp_path, monkeypatch):
    """A study checks each run's weights at every input size: the hash is remembered by the file's stat data, and a
    rewrite of the same size, in place or by atomic replace, is hashed afresh."""
    import hashlib
    import os
    from pathlib import Path

    from popevit.artifact import atomic_write_bytes, file_sha256

    path = tmp_path / "model.safetensors"
    path.write_bytes(b"a" * 1000)
    reads = []
    read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: reads.append(self) or read_bytes(self))
    assert file_sha256(path) == file_sha256(str(path)) == hashlib.sha256(b"a" * 1000).hexdigest()
    assert len(reads) == 1
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_bytes(b"b" * 1000))
    assert file_sha256(path) == hashlib.sha256(b"b" * 1000).hexdigest()
    stamp = path.stat().st_mtime_ns
    path.write_bytes(b"c" * 1000)  # same inode, same size: the modification time tells the rewrite
    os.utime(path, ns=(stamp + 1, stamp + 1))
    assert file_sha256(path) == hashlib.sha256(b"c" * 1000).hexdigest()
    assert len(reads) == 3


@pytest.mark.parametrize(
    ("kwargs", "label"),
    [
        ({"pos_enc": "pope"}, "vit_p8_w64_d4_conv + pope"),
        ({"pos_enc": "pope", "stem": "patch"}, "vit_p8_w64_d4_conv + pope"),
        ({"pos_enc": "rope_axial", "stem": "res"}, "vit_p8_w64_d4_conv + rope_axial (res stem)"),
        ({"pos_enc": "pope", "stem": "res", "fc_norm": True}, "vit_p8_w64_d4_conv + pope (res stem, fc_norm)"),
        ({"pos_enc": "pope", "fc_norm": True}, "vit_p8_w64_d4_conv + pope (fc_norm)"),
    ],
)
def test_a_model_label_names_what_differs_from_the_preset(kwargs, label):
    assert model_label("vit_p8_w64_d4_conv", kwargs) == label
