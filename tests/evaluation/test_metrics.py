"""Metrics equal scikit-learn's / torchmetrics', and percentile bootstrap CIs cover at about the nominal rate."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from popevit.evaluation.metrics import (
    bootstrap_indices,
    bootstrap_samples,
    expected_calibration_error,
    indices_to_weights,
    metric_names,
    metrics_with_ci,
    percentile_ci,
    point_metrics,
    weighted_metrics,
)

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def _random_data(n: int, k: int, seed: int, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, size=n)
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]  # informative but imperfect
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    if ties:  # coarse probabilities create many tied scores, which AUROC must count as 1/2
        proba = np.round(proba, 1) + 1e-3
        proba /= proba.sum(1, keepdims=True)
    return y, proba


def _assert_same(a: dict[str, float], b: dict[str, float]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-9, atol=1e-12, err_msg=k)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("classes", [CLASSES, ["notumor", "tumor"], ["a", "b", "c"]])
def test_metrics_equal_sklearn(classes, ties):
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        f1_score,
        log_loss,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    y, proba = _random_data(300, len(classes), seed=1, ties=ties)
    pred = proba.argmax(1)
    pt = point_metrics(y, proba, classes)
    assert list(pt) != [] and set(pt) == set(metric_names(classes))
    assert pt["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert pt["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert pt["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert pt["log_loss"] == pytest.approx(log_loss(y, proba))
    if len(classes) > 2:
        assert pt["auroc_macro"] == pytest.approx(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    else:
        assert pt["auroc_macro"] == pytest.approx(roc_auc_score(y, proba[:, 1]))
    for k, c in enumerate(classes):
        assert pt[f"precision/{c}"] == pytest.approx(precision_score(y == k, pred == k))
        assert pt[f"recall/{c}"] == pytest.approx(recall_score(y == k, pred == k))
        assert pt[f"specificity/{c}"] == pytest.approx(recall_score(y != k, pred != k))
    # the vectorised engine used by the bootstrap equals the scikit-learn point metrics
    fast = {k: float(v[0]) for k, v in weighted_metrics(y, proba, classes, np.ones((1, len(y)))).items()}
    _assert_same(fast, pt)


def test_weighted_metrics_equal_materialised_resamples():
    y, proba = _random_data(80, 4, seed=2, ties=True)
    idx = bootstrap_indices(len(y), 6, seed=3)
    fast = weighted_metrics(y, proba, CLASSES, indices_to_weights(idx, len(y)))
    for b in range(len(idx)):
        ref = point_metrics(y[idx[b]], proba[idx[b]], CLASSES)
        _assert_same({k: float(v[b]) for k, v in fast.items()}, ref)


def test_tumor_vs_notumor_hand_computed():
    classes = ["glioma", "notumor", "pituitary"]
    y = np.array([0, 0, 2, 2, 1, 1, 1])
    pred = np.array([2, 1, 2, 1, 1, 1, 0])  # glioma->pituitary still counts as "tumor found"
    proba = np.full((7, 3), 0.1)
    proba[np.arange(7), pred] = 0.8
    pt = point_metrics(y, proba, classes)
    assert pt["tumor_sensitivity"] == pytest.approx(2 / 4)  # 4 tumours, 2 predicted as some tumour
    assert pt["tumor_specificity"] == pytest.approx(2 / 3)  # 3 no-tumour, 2 predicted notumor
    assert pt["accuracy"] == pytest.approx(3 / 7)
    binary = point_metrics(np.array([0, 1, 1]), np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]]), ["notumor", "tumor"])
    assert binary["tumor_sensitivity"] == binary["recall/tumor"] == pytest.approx(1 / 2)  # binary tasks report it too
    assert binary["tumor_specificity"] == binary["recall/notumor"] == pytest.approx(1.0)


def test_ece_matches_torchmetrics():
    import torch
    from torchmetrics.classification import MulticlassCalibrationError

    y, proba = _random_data(500, 4, seed=4)
    tm = MulticlassCalibrationError(num_classes=4, n_bins=15, norm="l1")
    ref = float(tm(torch.tensor(proba, dtype=torch.float64), torch.tensor(y)))
    assert expected_calibration_error(y, proba, n_bins=15) == pytest.approx(ref, abs=1e-6)
    perfect = np.eye(4)[y]
    assert expected_calibration_error(y, perfect) == 0.0


def test_ci_seeded_and_sane():
    y, proba = _random_data(200, 4, seed=5)
    a = metrics_with_ci(y, proba, CLASSES, n_boot=300, seed=0)
    b = metrics_with_ci(y, proba, CLASSES, n_boot=300, seed=0)
    c = metrics_with_ci(y, proba, CLASSES, n_boot=300, seed=1)
    assert a == b
    assert a != c and a["accuracy"]["value"] == c["accuracy"]["value"]
    for name, m in a.items():
        assert m["lo"] <= m["value"] + 1e-9 <= m["hi"] + 2e-9 or name.startswith(("ece", "log_loss")), name
        assert m["lo"] < m["hi"], name
    small = metrics_with_ci(y[:50], proba[:50], CLASSES, n_boot=300, seed=0)
    width = lambda m: m["hi"] - m["lo"]  # noqa: E731
    assert width(small["accuracy"]) > width(a["accuracy"])


def test_absent_class_gives_nan_auroc_and_valid_count():
    y, proba = _random_data(40, 4, seed=6)
    y[y == 3] = 0
    out = metrics_with_ci(y, proba, CLASSES, n_boot=50, seed=0)
    assert np.isnan(out["auroc/pituitary"]["value"]) and out["auroc/pituitary"]["n_valid"] == 0
    assert np.isfinite(out["accuracy"]["lo"])
    # written as strict JSON (null, not NaN) and printed as n/a
    import json

    from popevit.evaluation.evaluate import format_metrics, jsonable

    strict = json.loads(json.dumps(jsonable({"n": 40, "metrics": out}), allow_nan=False))
    assert strict["metrics"]["auroc/pituitary"]["value"] is None
    assert "n/a" in format_metrics(strict, ["auroc/pituitary"])


def _coverage(n_sim: int, n: int, n_boot: int, seed: int) -> dict[str, float]:
    """Fraction of simulations whose 95% CI covers the population value.

    Population: y ~ Bernoulli(1/2); score ~ N(+d/2, 1) for positives, N(-d/2, 1) for negatives; p1 = sigmoid(score).
    Then accuracy (threshold 0) = Phi(d/2) and AUROC = Phi(d / sqrt(2)) exactly.
    """
    d = 1.5
    truth = {"accuracy": stats.norm.cdf(d / 2), "auroc_macro": stats.norm.cdf(d / np.sqrt(2))}
    rng = np.random.default_rng(seed)
    hits = {k: 0 for k in truth}
    for i in range(n_sim):
        y = rng.integers(0, 2, size=n)
        s = rng.normal(size=n) + d * (y - 0.5)
        p1 = 1 / (1 + np.exp(-s))
        boot = bootstrap_samples(y, np.stack([1 - p1, p1], 1), ["neg", "pos"], n_boot=n_boot, seed=i)
        for k, t in truth.items():
            lo, hi = percentile_ci(boot[k], 0.95)  # the interval metrics_with_ci reports
            hits[k] += lo <= t <= hi
    return {k: v / n_sim for k, v in hits.items()}


def test_bootstrap_coverage_fast():
    cov = _coverage(n_sim=150, n=120, n_boot=400, seed=0)
    # nominal 0.95; with 150 simulations the Monte-Carlo s.e. is ~0.018
    for k, c in cov.items():
        assert 0.88 <= c <= 0.99, (k, c)


@pytest.mark.slow
def test_bootstrap_coverage_slow():
    cov = _coverage(n_sim=1000, n=200, n_boot=1000, seed=1)
    for k, c in cov.items():
        assert 0.925 <= c <= 0.97, (k, c)
