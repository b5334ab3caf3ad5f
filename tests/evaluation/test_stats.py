"""McNemar and DeLong against hand-computed values and an independent O(n^2) DeLong; the paired bootstrap."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from popevit.evaluation.stats import delong_covariance, delong_test, mcnemar_exact, paired_bootstrap


def test_mcnemar_exact_hand_computed():
    # b = 1, c = 5: two-sided exact p = 2 * P(X <= 1), X ~ Bin(6, 1/2) = 2 * (1 + 6) / 64
    a = np.array([1, 0, 0, 0, 0, 0, 1, 1, 0], bool)
    b = np.array([0, 1, 1, 1, 1, 1, 1, 1, 0], bool)
    r = mcnemar_exact(a, b)
    assert (r["b"], r["c"], r["n"]) == (1, 5, 9)
    assert r["p_value"] == pytest.approx(14 / 64)
    assert mcnemar_exact(b, a)["p_value"] == pytest.approx(14 / 64)
    assert mcnemar_exact(np.zeros(10, bool), np.ones(10, bool))["p_value"] == pytest.approx(2 / 1024)
    assert mcnemar_exact(a, a)["p_value"] == 1.0
    with pytest.raises(ValueError, match="paired"):
        mcnemar_exact(a, b[:3])


def test_delong_hand_computed():
    # positives X = (.8, .6, .4), negatives Y = (.5, .2).
    # V10 = (1, 1, 1/2), V01 = (2/3, 1); AUC = 5/6; var = var(V10)/3 + var(V01)/2 = (1/12)/3 + (1/18)/2 = 1/18
    target = np.array([1, 1, 1, 0, 0], bool)
    score = np.array([0.8, 0.6, 0.4, 0.5, 0.2])
    auc, cov = delong_covariance(target, score[None])
    assert auc[0] == pytest.approx(5 / 6)
    assert cov[0, 0] == pytest.approx(1 / 18)


def _delong_quadratic(target: np.ndarray, sa: np.ndarray, sb: np.ndarray) -> tuple[float, float, float]:
    """Independent reference: DeLong 1988 structural components from the Mann-Whitney kernel, O(m n)."""

    def components(s):
        x, y = s[target][:, None], s[~target][None, :]
        psi = (x > y) + 0.5 * (x == y)  # (m, n) kernel
        return psi.mean(), psi.mean(1), psi.mean(0)

    (aa, a10, a01), (ab, b10, b01) = components(sa), components(sb)
    m, n = len(a10), len(a01)
    s10 = np.cov(np.stack([a10, b10]))
    s01 = np.cov(np.stack([a01, b01]))
    s = s10 / m + s01 / n
    z = (aa - ab) / np.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    return aa, ab, 2 * stats.norm.sf(abs(z))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_matches_quadratic_reference_and_sklearn(seed):
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    n = 150
    target = rng.random(n) < 0.4
    sa = np.round(rng.normal(size=n) + 1.0 * target, 1)  # rounding creates ties
    sb = np.round(0.6 * sa + rng.normal(size=n) * 0.8 + 0.3 * target, 1)
    r = delong_test(target, sa, sb)
    aa, ab, p = _delong_quadratic(target, sa, sb)
    assert r["auc_a"] == pytest.approx(aa) and r["auc_a"] == pytest.approx(roc_auc_score(target, sa))
    assert r["auc_b"] == pytest.approx(ab)
    assert r["p_value"] == pytest.approx(p, rel=1e-9)


def test_delong_identical_models():
    target = np.array([1, 0, 1, 0, 1, 1, 0], bool)
    s = np.arange(7.0)
    r = delong_test(target, s, s)
    assert r["diff"] == 0 and r["p_value"] == 1.0


def test_delong_without_variance_is_undefined_not_significant():
    target = np.array([1, 1, 0, 0], bool)
    perfect, constant = np.array([0.9, 0.8, 0.1, 0.2]), np.full(4, 0.5)  # AUROC 1 vs 0.5, zero variance estimate
    r = delong_test(target, perfect, constant)
    assert r["diff"] == 0.5 and np.isnan(r["z"]) and np.isnan(r["p_value"])  # not p = 0 from 4 images


def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    n, classes = 200, ["a", "b", "c"]
    y = rng.integers(0, 3, n)
    good = np.exp(rng.normal(size=(n, 3)) + 2.5 * np.eye(3)[y])
    bad = np.exp(rng.normal(size=(n, 3)) + 0.5 * np.eye(3)[y])
    same = paired_bootstrap(y, [good], [good], classes, n_boot=200, seed=0)
    assert same["accuracy"]["diff"] == 0 and same["accuracy"]["lo"] == 0 == same["accuracy"]["hi"]
    assert same["auroc_macro"]["p_value"] == 1.0
    r = paired_bootstrap(y, [good, good * 1.01], [bad], classes, n_boot=300, seed=0)
    for m in ("accuracy", "auroc_macro"):
        assert 0 < r[m]["lo"] <= r[m]["diff"] <= r[m]["hi"]
        assert r[m]["p_value"] < 0.01
    assert r == paired_bootstrap(y, [good, good * 1.01], [bad], classes, n_boot=300, seed=0)
    assert r["accuracy"]["n_valid"] == 300 == r["auroc_macro"]["n_valid"]


def test_paired_bootstrap_counts_the_resamples_where_macro_auroc_is_defined():
    rng = np.random.default_rng(1)
    y = np.r_[np.zeros(60, int), np.ones(57, int), np.full(3, 2)]  # class c: 3 of 120 images
    a, b = rng.dirichlet(np.ones(3), 120), rng.dirichlet(np.ones(3), 120)
    r = paired_bootstrap(y, [a], [b], ["a", "b", "c"], n_boot=400, seed=0)
    assert r["accuracy"]["n_valid"] == 400
    assert 300 < r["auroc_macro"]["n_valid"] < 400  # (1 - 3/120)^120 = 5% of resamples lack class c
