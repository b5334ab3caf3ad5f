"""Temperature scaling: the fit recovers a known temperature, keeps every arg-max, and evaluate --calibrate uses it."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy.special import softmax

from popevit.evaluation.calibration import apply_temperature, fit_temperature, nll, temperature_at_bound
from popevit.evaluation.evaluate import evaluate_run
from popevit.evaluation.metrics import point_metrics


def _overconfident(n: int, true_t: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z / true_t), reported as softmax(z): a model over-confident by true_t."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 3, size=(n, 4))
    p_true = softmax(z / true_t, axis=1)
    y = np.array([rng.choice(4, p=p) for p in p_true])
    return y, softmax(z, axis=1)


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_recovers_the_temperature_that_generated_the_labels(true_t):
    y, proba = _overconfident(20_000, true_t)
    t = fit_temperature(y, proba)
    assert t == pytest.approx(true_t, rel=0.06)
    assert nll(y, proba, t) <= nll(y, proba, 1.0)


def test_scaling_keeps_every_argmax_and_sums_to_one_and_t1_is_identity():
    y, proba = _overconfident(500, 2.0)
    scaled = apply_temperature(proba, 2.0)
    np.testing.assert_array_equal(scaled.argmax(1), proba.argmax(1))
    np.testing.assert_allclose(scaled.sum(1), 1.0, atol=1e-12)
    np.testing.assert_allclose(apply_temperature(proba, 1.0), proba, atol=1e-9)
    assert scaled.max(1).mean() < proba.max(1).mean()  # T > 1 softens
    # The fitted temperature repairs the calibration of a model over-confident by 2x.
    t = fit_temperature(*_overconfident(5000, 2.0, seed=1))
    assert (
        point_metrics(y, apply_temperature(proba, t), list("abcd"))["ece"]
        < point_metrics(y, proba, list("abcd"))["ece"]
    )
    with pytest.raises(ValueError, match="temperature must be > 0"):
        apply_temperature(proba, 0.0)


def test_a_perfectly_separated_validation_set_leaves_t_unidentified_and_says_so():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    z = rng.normal(0, 1, (200, 4))
    z[np.arange(200), y] += 6.0  # every image right, with a margin: the NLL falls all the way to T -> 0
    with pytest.warns(UserWarning, match=r"sits at the search bound.*to 0 \(every image right"):
        t = fit_temperature(y, softmax(z, axis=1))
    assert temperature_at_bound(t) and t < 0.02
    z[np.arange(200), y] += 50.0  # so wide that the NLL is flat to machine precision: the fit still ends at the bound
    with pytest.warns(UserWarning, match="sits at the search bound"):
        assert temperature_at_bound(fit_temperature(y, softmax(z, axis=1)))
    y2, proba2 = _overconfident(2000, 1.5)
    assert not temperature_at_bound(fit_temperature(y2, proba2))


def test_tiny_probabilities_are_not_flattened_before_scaling():
    proba = np.array([[1.0 - 2e-20, 1e-20, 1e-20, 0.0], [1.0 - 2e-15, 1e-15, 1e-15, 0.0]])
    scaled = apply_temperature(proba, 2.0)  # log p / 2: 1e-20 -> 1e-10, 1e-15 -> 3.2e-8 (a 1e-12 floor gave 1e-6)
    np.testing.assert_allclose(scaled[:, 1], [1e-10, np.sqrt(1e-15)], rtol=1e-3)


def test_evaluate_calibrate_fits_on_val_and_scales_the_test_predictions(tmp_path, phantom_root, monkeypatch):
    from popevit.config import load_config
    from popevit.training import train

    cfg = load_config(
        None,
        [
            "model.name=vit_p8_w32_d2",
            "data.preprocess.img_size=32",
            "data.batch_size=8",
            "train.max_epochs=2",
            "train.progress_bar=false",
            "train.threads=1",
            f"data.data={phantom_root}",
        ],
    )
    run = train(cfg, tmp_path / "run").out_dir
    kw = {"n_boot": 50, "device": "cpu", "plots": False}
    raw = evaluate_run(run, **kw)
    cal = evaluate_run(run, calibrate=True, **kw)
    assert cal["out"].endswith("eval/test-ts") and raw["out"].endswith("eval/test")
    c = json.loads((run / "eval" / "test-ts" / "metrics.json").read_text())["calibration"]
    with open(run / "manifest.csv", newline="") as f:
        assert c["fit_on"]["n"] == sum(r["split"] == "val" for r in csv.DictReader(f))
    assert c["val_nll"]["after"] <= c["val_nll"]["before"] + 1e-9 and c["at_bound"] is False
    assert c["uncalibrated"]["ece"] == pytest.approx(raw["metrics"]["ece"]["value"])

    def probs(folder):
        with open(folder / "predictions.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        return np.array([[float(r[k]) for k in r if k.startswith("p_")] for r in rows])

    p_raw, p_cal = probs(run / "eval" / "test"), probs(run / "eval" / "test-ts")
    np.testing.assert_allclose(p_cal, apply_temperature(p_raw, c["temperature"]), atol=1e-6)
    assert cal["metrics"]["accuracy"]["value"] == raw["metrics"]["accuracy"]["value"]
    with pytest.raises(ValueError, match="validation images"):
        evaluate_run(run, split="val", calibrate=True, **kw)
    monkeypatch.chdir(phantom_root.parent)  # the same images by a relative path are still validation images
    with pytest.raises(ValueError, match="validation images"):
        evaluate_run(run, data=phantom_root.name, calibrate=True, **kw)
    # study --calibrate reads the temperature-scaled predictions (and would make them if missing)
    from popevit.evaluation.study import run_study

    study = run_study([[run]], out=tmp_path / "study", n_boot=50, device="cpu", paired_tests=False, calibrate=True)
    assert "temperature-scaled" in study["source"]
    assert study["groups"][0]["metrics"]["ece"]["value"] == pytest.approx(cal["metrics"]["ece"]["value"])
