"""Paired tests for comparing classifiers evaluated on the same images.

- :func:`paired_bootstrap`: resample images once and apply the *same* resample to both models, so the interval of the
  difference reflects only how the models differ, not which images happened to be in the test set (Efron &
  Tibshirani 1993, ch. 16). Works on seed groups: the statistic is then the seed-mean of group A minus the seed-mean
  of group B, recomputed on every resample (the "pooled paired test" of ``popevit compare``).
- :func:`mcnemar_exact`: McNemar's test on correctness (McNemar, Psychometrika 1947), in its exact form: under H0 the
  ``b`` discordant pairs where only A is right are Binomial(b + c, 1/2) (Dietterich, Neural Comput. 1998, recommends
  it for comparing classifiers on one test set). Two-sided p from ``scipy.stats.binomtest``.
- :func:`delong_test`: DeLong's test for two correlated AUROCs (DeLong, DeLong & Clarke-Pearson, Biometrics 44:837,
  1988), with the O(n log n) midrank algorithm of Sun & Xu (IEEE Signal Process. Lett. 21:1389, 2014). The
  structural components are ``V10_i = (T_Z(X_i) - T_X(X_i)) / n`` for the ``m`` positives and
  ``V01_j = 1 - (T_Z(Y_j) - T_Y(Y_j)) / m`` for the ``n`` negatives, where ``T`` are midranks within the positives
  (X), negatives (Y) and both (Z) (Sun & Xu, eqs. 9-12); ``S = S10/m + S01/n`` is the AUROC covariance and
  ``z = (A_a - A_b) / sqrt(S_aa + S_bb - 2 S_ab)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from popevit.evaluation.metrics import (
    iter_bootstrap_weights,
    normalize_proba,
    percentile_ci,
    point_metrics,
    weighted_metrics,
)


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float]:
    """Exact McNemar test that two classifiers have the same accuracy on paired samples.

    Args:
        correct_a: (n,) bool, whether model A classified each sample correctly.
        correct_b: (n,) bool, the same for model B, on the same samples in the same order.

    Returns:
        ``b`` (A right, B wrong), ``c`` (A wrong, B right), ``n`` and the two-sided exact ``p_value``
        (1.0 when there are no discordant pairs).
    """
    a, b_ = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError(f"correct_a and correct_b must be paired (same shape), got {a.shape} and {b_.shape}")
    b = int((a & ~b_).sum())
    c = int((~a & b_).sum())
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5, alternative="two-sided").pvalue)
    return {"b": b, "c": c, "n": int(a.size), "p_value": p}


def _midrank(x: np.ndarray) -> np.ndarray:
    return stats.rankdata(x, method="average", axis=-1)


def delong_covariance(target: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUROCs of several scores on one binary target and their DeLong covariance (Sun & Xu 2014 algorithm).

    Args:
        target: (n,) bool or 0/1, the positive class.
        scores: (R, n) scores of R models, higher = more positive.

    Returns:
        ``(auc, cov)`` with shapes (R,) and (R, R).
    """
    target = np.asarray(target).astype(bool)
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    x, y = scores[:, target], scores[:, ~target]  # (R, m) positives, (R, n) negatives
    m, n = x.shape[1], y.shape[1]
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs >= 2 positives and >= 2 negatives, got {m} and {n}")
    tx, ty = _midrank(x), _midrank(y)  # (R, m), (R, n)
    tz = _midrank(np.concatenate([x, y], axis=1))  # (R, m + n)
    auc = tz[:, :m].sum(axis=1) / (m * n) - (m + 1) / (2 * n)  # (R,)
    v10 = (tz[:, :m] - tx) / n  # (R, m) structural components of the positives
    v01 = 1.0 - (tz[:, m:] - ty) / m  # (R, n) structural components of the negatives
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n  # (R, R)
    return auc, cov


def delong_test(target: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> dict[str, float]:
    """DeLong's two-sided test that two correlated AUROCs on the same samples are equal.

    Args:
        target: (n,) bool, the positive class.
        score_a: (n,) scores of model A.
        score_b: (n,) scores of model B, on the same samples.

    Returns:
        ``auc_a``, ``auc_b``, ``diff`` (a - b), ``se`` of the difference, ``z`` and ``p_value``. With a zero variance
        estimate, equal AUROCs give ``z = 0, p = 1``; different ones give NaN (the test is not defined, e.g. one model
        separates the classes perfectly and the other not at all), never a p of 0.
    """
    auc, cov = delong_covariance(target, np.stack([score_a, score_b]))
    diff = float(auc[0] - auc[1])
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    if var <= 1e-15:  # no spread to test against: identical rankings, or degenerate (AUROC 0/1 vs constant) scores
        z, p = (0.0, 1.0) if abs(diff) < 1e-12 else (float("nan"), float("nan"))
    else:
        z = diff / np.sqrt(var)
        p = float(2 * stats.norm.sf(abs(z)))
    return {
        "auc_a": float(auc[0]),
        "auc_b": float(auc[1]),
        "diff": diff,
        "se": float(np.sqrt(max(var, 0.0))),
        "z": float(z),
        "p_value": p,
    }


def bootstrap_seed_means(
    y: np.ndarray,
    probas: Sequence[np.ndarray],
    classes: Sequence[str],
    metrics: Sequence[str],
    n_boot: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Metric -> (n_boot,) seed-means of a group of runs, every run evaluated on each seeded image resample.

    Two calls with the same ``n``, ``n_boot`` and ``seed`` use the same resamples, so their difference is paired.
    """
    boot: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for w in iter_bootstrap_weights(len(y), n_boot, seed):
        res = [weighted_metrics(y, p, classes, w) for p in probas]
        for m in metrics:
            boot[m].append(np.mean([r[m] for r in res], axis=0))
    return {m: np.concatenate(v) for m, v in boot.items()}


def paired_bootstrap(
    y: np.ndarray,
    probas_a: Sequence[np.ndarray],
    probas_b: Sequence[np.ndarray],
    classes: Sequence[str],
    metrics: Sequence[str] = ("auroc_macro", "accuracy"),
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, float]]:
    """Paired bootstrap CI of ``mean_seeds(metric_A) - mean_seeds(metric_B)`` on the same images.

    Every resample draws images once and evaluates every run of both groups on it, so the difference is paired.
    With one run per group this is the ordinary paired bootstrap of ``metric_A - metric_B``.

    Args:
        y: (n,) integer labels.
        probas_a: runs of group A, each (n, K), rows aligned with ``y``.
        probas_b: runs of group B, likewise.
        classes: K class names.
        metrics: metric keys of :func:`popevit.evaluation.metrics.metric_names`.
        n_boot: resamples.
        seed: resampling seed.
        level: confidence level.

    Returns:
        Metric -> ``{"a", "b", "diff", "lo", "hi", "p_value", "n_valid"}`` (``a``, ``b``: group point values).
        ``p_value`` is the two-sided bootstrap p: twice the smaller tail of resampled differences at or beyond 0, as
        ``(1 + count) / (1 + n_valid)``, so its resolution is ``2 / n_valid``. ``n_valid`` counts the resamples on
        which the metric is defined (macro AUROC is not when a resample lacks a class); the CI and p use only those.
    """
    if not probas_a or not probas_b:
        raise ValueError("paired_bootstrap needs at least one run in each group")
    probas_a = [normalize_proba(p) for p in probas_a]
    probas_b = [normalize_proba(p) for p in probas_b]

    def group_point(probas: list[np.ndarray]) -> dict[str, float]:
        pts = [point_metrics(y, p, classes) for p in probas]
        return {m: float(np.mean([pt[m] for pt in pts])) for m in metrics}

    pa, pb = group_point(probas_a), group_point(probas_b)
    boot_a = bootstrap_seed_means(y, probas_a, classes, metrics, n_boot, seed)  # same seed: same resamples
    boot_b = bootstrap_seed_means(y, probas_b, classes, metrics, n_boot, seed)
    out: dict[str, dict[str, float]] = {}
    for m in metrics:
        d = boot_a[m] - boot_b[m]
        d = d[np.isfinite(d)]
        lo, hi = percentile_ci(d, level)
        # Monte-Carlo p-value with the +1 correction (Davison & Hinkley 1997, eq. 4.11): never exactly 0.
        tail = min((d <= 0).sum(), (d >= 0).sum())
        p = min(1.0, 2 * (1 + tail) / (1 + d.size)) if d.size else float("nan")
        out[m] = {
            "a": pa[m],
            "b": pb[m],
            "diff": pa[m] - pb[m],
            "lo": lo,
            "hi": hi,
            "p_value": float(p),
            "n_valid": int(d.size),
        }
    return out
