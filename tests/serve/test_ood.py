"""The OOD flag: fitted on the run's own splits, it flags non-MRI images far more often than held-out MRI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from popevit.data import read_manifest
from popevit.serve.ood import OOD_ARRAYS, OOD_JSON, ensure_ood, fit_ood, load_ood, pooled_side
from popevit.serve.predict import Predictor

from .conftest import non_mri_images


def _flag_rates(predictor: Predictor, folder: Path, images: dict[str, list[np.ndarray]]) -> dict[str, float]:
    rates = {}
    for name, arrays in images.items():
        sub = folder / name
        sub.mkdir(parents=True)
        for i, a in enumerate(arrays):
            Image.fromarray(a).save(sub / f"{i:03d}.png")
        result = predictor.run([sub])
        if name == "blank":  # the decoder refuses a blank image outright, with the reason: never a prediction
            assert not result.records and all("blank image" in f.reason for f in result.failed)
            continue
        assert not result.failed and len(result.records) == len(arrays)
        rates[name] = float(np.mean([r["ood"] for r in result.records]))
    return rates


def test_flags_non_mri_far_more_often_than_held_out_mri(tiny_run, serve_manifest, tmp_path):
    predictor = Predictor(tiny_run, device="cpu")
    assert predictor.info.ood is not None
    test_rows = read_manifest(serve_manifest).select("test")
    held_out = predictor.run([r.path for r in test_rows])
    mri_rate = float(np.mean([r["ood"] for r in held_out.records]))
    rates = _flag_rates(predictor, tmp_path / "non-mri", non_mri_images(np.random.default_rng(0)))
    assert len(held_out.records) == len(test_rows) >= 30
    assert mri_rate <= 0.2, mri_rate
    for name, rate in rates.items():
        assert rate >= 0.8, (name, rate, mri_rate)
    assert np.mean(list(rates.values())) >= 4 * max(mri_rate, 0.05)


def test_saved_flag_reproduces_its_validation_recall(tiny_run, serve_manifest):
    """The thresholds were fitted in memory; the flag reloaded from disk must see the same scores."""
    record = json.loads((tiny_run / OOD_JSON).read_text())
    result = Predictor(tiny_run, device="cpu").run([r.path for r in read_manifest(serve_manifest).select("val")])
    assert 1 - np.mean([r["ood"] for r in result.records]) == pytest.approx(record["val_recall"])


def test_fit_records_what_it_was_fitted_on(tiny_run):
    record = json.loads((tiny_run / OOD_JSON).read_text())
    assert set(record["thresholds"]) == {"energy", "input", "contrast"}
    assert record["recall_target"] == 0.95 and record["val_recall"] >= 0.95
    assert record["fitted_on"]["thresholds"] == {"split": "val", "n": 40}
    assert record["fitted_on"]["input_model"]["split"] == "train"
    assert record["fitted_on"]["input_model"]["pooled_side"] == pooled_side(32) == 32
    assert len(record["fitted_on"]["manifest_sha256"]) == 64 and (tiny_run / OOD_ARRAYS).is_file()
    detector = load_ood(tiny_run)
    assert detector is not None and detector.density is not None
    assert detector.density.components.shape == (20, 32 * 32)  # k = n_train / 4 = 80 / 4


def test_fit_is_reused_and_refitted_when_the_weights_change(tiny_run):
    import torch

    from popevit.artifact import load_artifact, save_artifact

    before = (tiny_run / OOD_JSON).read_text()
    detector, note = ensure_ood(tiny_run)
    assert note is None and (tiny_run / OOD_JSON).read_text() == before  # fresh: loaded, not refitted
    model, meta = load_artifact(tiny_run)
    with torch.no_grad():
        model.head.bias += 1.0
    save_artifact(model, meta, tiny_run)  # new weights, recorded in model.json as a retrained run would be
    lines = []
    refit, note = ensure_ood(tiny_run, echo=lines.append)
    assert note is None and any("weights changed" in ln for ln in lines)
    assert json.loads((tiny_run / OOD_JSON).read_text())["weights_sha256"] != json.loads(before)["weights_sha256"]
    # energy moves with the logits (+1 on every class lowers it by 1); the input scores do not depend on the weights
    assert refit.thresholds["energy"] == pytest.approx(detector.thresholds["energy"] - 1.0, abs=1e-4)
    for name in ("input", "contrast"):
        assert refit.thresholds[name] == pytest.approx(detector.thresholds[name], abs=1e-5)


def test_unavailable_flag_says_why_and_prediction_goes_on(tiny_run, serve_phantoms, tmp_path):
    for name in (OOD_JSON, OOD_ARRAYS, "manifest.csv"):
        (tiny_run / name).unlink()
    with pytest.raises(RuntimeError, match=r"manifest\.csv not found"):
        fit_ood(tiny_run)
    predictor = Predictor(tiny_run, device="cpu")
    assert predictor.info.ood is None and "manifest.csv not found" in predictor.info.ood_note
    result = predictor.run([serve_phantoms / "glioma" / "glioma_0000.png"])
    assert len(result.records) == 1 and result.records[0]["ood"] is False
    assert result.to_json()["ood"] == {"available": False, "note": predictor.info.ood_note}
