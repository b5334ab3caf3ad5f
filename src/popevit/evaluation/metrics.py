"""Point metrics of a K-class probabilistic classifier, and seeded bootstrap confidence intervals for every one.

Point estimates come from scikit-learn (:func:`point_metrics`). The bootstrap needs the same metrics on ``B >= 1000``
resamples, which scikit-learn would compute one resample at a time; :func:`weighted_metrics` instead evaluates every
metric for a whole ``(B, n)`` matrix of per-sample weights at once. A bootstrap resample of ``n`` images is exactly a
vector of multinomial counts (how often each image was drawn), so weights ``w`` give the metric of the resample
without materialising it. With all weights 1 it is the point estimate; the tests check both against scikit-learn.

Confidence intervals are **percentile** intervals of the nonparametric bootstrap (Efron & Tibshirani, *An
Introduction to the Bootstrap*, 1993, ch. 13): the 2.5th and 97.5th percentiles of the metric over ``n_boot``
resamples of the images, drawn with a seeded ``numpy.random.Generator``. We chose percentile over BCa because BCa's
acceleration constant needs a jackknife (``n`` more evaluations of every metric) and its correction matters mostly
for very small ``n``; the percentile interval is transformation-respecting and its coverage is checked by simulation
in ``tests/evaluation``. Caveat: the bootstrap treats images as independent, so near-duplicate slices of one patient
make the interval too narrow; report the de-duplicated subset (``--dedup-against``) alongside.

Metric definitions (keys of the returned dicts; ``c`` is a class name):

- ``accuracy``, ``balanced_accuracy`` (mean recall over classes present in the labels), ``f1_macro``.
- ``precision/c``, ``recall/c``, ``f1/c``, ``specificity/c`` (one-vs-rest, predicted class = arg-max; 0 when a
  denominator is 0, as scikit-learn's ``zero_division=0``).
- ``auroc/c`` (one-vs-rest AUROC of ``p_c``, Mann-Whitney with ties counted 1/2; NaN when a class is absent) and
  ``auroc_macro`` (their unweighted mean, as ``roc_auc_score(multi_class="ovr", average="macro")``).
- ``log_loss`` (mean negative log-likelihood of the true class, probabilities clipped to ``[eps, 1]``).
- ``ece``: top-label expected calibration error with ``n_bins`` equal-width confidence bins (Guo et al., ICML 2017,
  arXiv:1706.04599, eq. 3): ``sum_b |B_b|/n * |acc(B_b) - conf(B_b)|``; bin ``b`` holds confidences in
  ``[b/M, (b+1)/M)``, the last bin includes 1 (torchmetrics' ``MulticlassCalibrationError(norm="l1")`` binning).
- With a ``notumor`` class (binary tasks and external sets collapsed to tumour / no tumour included):
  ``tumor_sensitivity`` (a tumour image predicted as any tumour class), ``tumor_specificity`` (a no-tumour image
  predicted ``notumor``) and ``tumor_auroc`` (score ``1 - p_notumor``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

NO_TUMOR = "notumor"
DEFAULT_N_BINS = 15


def _check_inputs(y: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y)
    proba = np.asarray(proba, dtype=np.float64)
    if proba.ndim != 2 or proba.shape[1] != len(classes):
        raise ValueError(f"proba must have shape (n, {len(classes)}) for classes {list(classes)}, got {proba.shape}")
    if y.shape != (proba.shape[0],):
        raise ValueError(f"labels must have shape ({proba.shape[0]},) to match proba, got {y.shape}")
    if proba.shape[0] == 0:
        raise ValueError("no samples to evaluate: the label/probability arrays are empty")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(classes):
        raise ValueError(f"labels must be integer class indices in [0, {len(classes)}), got {y.dtype} {y[:5]}...")
    if not np.all(np.isfinite(proba)) or proba.min() < 0:
        raise ValueError("proba has negative or non-finite entries; pass softmax probabilities")
    return y.astype(np.int64), normalize_proba(proba)


def normalize_proba(proba: np.ndarray) -> np.ndarray:
    """Rows renormalised to sum to 1 in float64 when they are off by > 1e-9 (float32 softmax is off by ~1e-7).

    Rows that already sum to 1 are left bit-identical, so tied scores stay tied.
    """
    proba = np.asarray(proba, dtype=np.float64)
    sums = proba.sum(axis=1, keepdims=True)
    return proba / sums if proba.size and np.abs(sums - 1.0).max() > 1e-9 else proba


def metric_names(classes: Sequence[str]) -> list[str]:
    """The metric keys computed for ``classes``, in report order."""
    names = ["accuracy", "balanced_accuracy", "f1_macro", "auroc_macro", "log_loss", "ece"]
    if _notumor_index(classes) is not None:
        names += ["tumor_sensitivity", "tumor_specificity", "tumor_auroc"]
    for stat in ("precision", "recall", "f1", "specificity", "auroc"):
        names += [f"{stat}/{c}" for c in classes]
    return names


def _notumor_index(classes: Sequence[str]) -> int | None:
    return list(classes).index(NO_TUMOR) if NO_TUMOR in classes and len(classes) >= 2 else None


def expected_calibration_error(y: np.ndarray, proba: np.ndarray, n_bins: int = DEFAULT_N_BINS) -> float:
    """Top-label ECE with equal-width bins (Guo et al. 2017, eq. 3); see the module docstring.

    Args:
        y: (n,) integer labels.
        proba: (n, K) class probabilities.
        n_bins: number of equal-width confidence bins on [0, 1].

    Returns:
        ECE in [0, 1].
    """
    proba = np.asarray(proba, dtype=np.float64)
    return float(_ece_weighted(np.asarray(y), proba, np.ones((1, len(y))), n_bins)[0])


def _bin_index(conf: np.ndarray, n_bins: int) -> np.ndarray:
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.searchsorted(edges, conf, side="right") - 1, 0, n_bins - 1)


def _ece_weighted(y: np.ndarray, proba: np.ndarray, w: np.ndarray, n_bins: int) -> np.ndarray:
    conf = proba.max(axis=1)  # (n,)
    correct = (proba.argmax(axis=1) == y).astype(np.float64)  # (n,)
    onehot = np.zeros((len(y), n_bins))
    onehot[np.arange(len(y)), _bin_index(conf, n_bins)] = 1.0  # (n, M)
    acc_b = (w * correct) @ onehot  # (B, M) weighted count of correct predictions per bin
    conf_b = (w * conf) @ onehot  # (B, M) weighted sum of confidences per bin
    return np.abs(acc_b - conf_b).sum(axis=1) / w.sum(axis=1)  # (B,)


def _auroc_weighted(pos: np.ndarray, score: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted Mann-Whitney AUROC for each row of ``w``: P(s_pos > s_neg) + P(tie)/2 under the weights."""
    order = np.argsort(score, kind="stable")
    s, p = score[order], pos[order]
    ws = w[:, order]  # (B, n) weights sorted by score
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first index of each tie group, (G,)
    pos_g = np.add.reduceat(ws * p, starts, axis=1)  # (B, G) positive weight per tie group
    neg_g = np.add.reduceat(ws * ~p, starts, axis=1)  # (B, G) negative weight per tie group
    neg_below = np.cumsum(neg_g, axis=1) - neg_g  # (B, G) negative weight strictly below the group
    num = (pos_g * (neg_below + 0.5 * neg_g)).sum(axis=1)
    den = pos_g.sum(axis=1) * neg_g.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _safe_div(num: np.ndarray, den: np.ndarray, fill: float = 0.0) -> np.ndarray:
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), fill)


def weighted_metrics(
    y: np.ndarray, proba: np.ndarray, classes: Sequence[str], w: np.ndarray, n_bins: int = DEFAULT_N_BINS
) -> dict[str, np.ndarray]:
    """Every metric of :func:`metric_names` under each row of per-sample weights.

    Args:
        y: (n,) integer labels indexing ``classes``.
        proba: (n, K) class probabilities (rows are renormalised to sum to 1).
        classes: K class names, in column order.
        w: (B, n) non-negative weights; bootstrap counts, or ones for the plain metric.
        n_bins: ECE bins.

    Returns:
        Metric name -> (B,) values.
    """
    y, proba = _check_inputs(y, proba, classes)
    w = np.atleast_2d(np.asarray(w, dtype=np.float64))
    n, K = proba.shape
    pred = proba.argmax(axis=1)  # (n,)
    cell = np.zeros((n, K * K))
    cell[np.arange(n), y * K + pred] = 1.0
    cm = (w @ cell).reshape(-1, K, K)  # (B, K, K) weighted confusion matrix, rows = truth
    tp = np.diagonal(cm, axis1=1, axis2=2)  # (B, K)
    support = cm.sum(axis=2)  # (B, K) true count per class
    predicted = cm.sum(axis=1)  # (B, K) predicted count per class
    total = cm.sum(axis=(1, 2))[:, None]  # (B, 1)
    fp, fn = predicted - tp, support - tp
    tn = total - tp - fp - fn

    recall = _safe_div(tp, support)
    out: dict[str, np.ndarray] = {
        "accuracy": tp.sum(axis=1) / total[:, 0],
        "balanced_accuracy": np.nanmean(np.where(support > 0, recall, np.nan), axis=1),
    }
    f1 = _safe_div(2 * tp, 2 * tp + fp + fn)
    out["f1_macro"] = f1.mean(axis=1)
    auroc = np.stack([_auroc_weighted(y == k, proba[:, k], w) for k in range(K)], axis=1)  # (B, K)
    out["auroc_macro"] = auroc.mean(axis=1)
    p_true = np.clip(proba[np.arange(n), y], np.finfo(np.float64).eps, 1.0)
    out["log_loss"] = (w @ -np.log(p_true)) / total[:, 0]
    out["ece"] = _ece_weighted(y, proba, w, n_bins)

    nt = _notumor_index(classes)
    if nt is not None:
        tumor_support = total[:, 0] - support[:, nt]
        tumor_hit = cm.sum(axis=(1, 2)) - cm[:, nt, :].sum(axis=1) - cm[:, :, nt].sum(axis=1) + cm[:, nt, nt]
        out["tumor_sensitivity"] = _safe_div(tumor_hit, tumor_support)
        out["tumor_specificity"] = _safe_div(cm[:, nt, nt], support[:, nt])
        out["tumor_auroc"] = _auroc_weighted(y != nt, 1.0 - proba[:, nt], w)

    per_class = {
        "precision": _safe_div(tp, predicted),
        "recall": recall,
        "f1": f1,
        "specificity": _safe_div(tn, tn + fp),
        "auroc": auroc,
    }
    for stat, values in per_class.items():
        for k, c in enumerate(classes):
            out[f"{stat}/{c}"] = values[:, k]
    return out


def point_metrics(
    y: np.ndarray, proba: np.ndarray, classes: Sequence[str], n_bins: int = DEFAULT_N_BINS
) -> dict[str, float]:
    """Every metric of :func:`metric_names`, computed with scikit-learn (ECE with :func:`expected_calibration_error`).

    Args:
        y: (n,) integer labels indexing ``classes``.
        proba: (n, K) class probabilities (rows are renormalised to sum to 1).
        classes: K class names, in column order.
        n_bins: ECE bins.

    Returns:
        Metric name -> value (NaN for an AUROC whose class is absent or the only one present).
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        log_loss,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    y, proba = _check_inputs(y, proba, classes)
    K = len(classes)
    labels = list(range(K))
    pred = proba.argmax(axis=1)

    def auroc(target: np.ndarray, score: np.ndarray) -> float:
        return float(roc_auc_score(target, score)) if 0 < target.sum() < len(target) else float("nan")

    out: dict[str, float] = {
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": _balanced_accuracy(balanced_accuracy_score, y, pred),
        "f1_macro": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
    }
    per_auroc = [auroc(y == k, proba[:, k]) for k in range(K)]
    out["auroc_macro"] = float(np.mean(per_auroc))
    out["log_loss"] = float(log_loss(y, proba, labels=labels))
    out["ece"] = expected_calibration_error(y, proba, n_bins)
    nt = _notumor_index(classes)
    if nt is not None:
        tumor_true, tumor_pred = y != nt, pred != nt
        out["tumor_sensitivity"] = float((tumor_pred & tumor_true).sum() / max(tumor_true.sum(), 1))
        out["tumor_specificity"] = float((~tumor_pred & ~tumor_true).sum() / max((~tumor_true).sum(), 1))
        out["tumor_auroc"] = auroc(tumor_true, 1.0 - proba[:, nt])

    prec, rec, f1, _ = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    cm = confusion_matrix(y, pred, labels=labels)
    fp = cm.sum(axis=0) - np.diag(cm)
    tn = cm.sum() - cm.sum(axis=1) - fp
    spec = np.where(tn + fp > 0, tn / np.maximum(tn + fp, 1), 0.0)
    for stat, values in {"precision": prec, "recall": rec, "f1": f1, "specificity": spec, "auroc": per_auroc}.items():
        for k, c in enumerate(classes):
            out[f"{stat}/{c}"] = float(values[k])
    return out


def _balanced_accuracy(fn: Any, y: np.ndarray, pred: np.ndarray) -> float:
    # A predicted class absent from y is expected on small sets; its undefined recall is skipped, as documented.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true", category=UserWarning)
        return float(fn(y, pred))


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) indices of ``n_boot`` resamples with replacement, from ``numpy.random.default_rng(seed)``."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def indices_to_weights(idx: np.ndarray, n: int) -> np.ndarray:
    """(B, n) resample indices -> (B, n) counts of how often each sample was drawn."""
    B = idx.shape[0]
    flat = (idx + n * np.arange(B)[:, None]).ravel()
    return np.bincount(flat, minlength=B * n).reshape(B, n).astype(np.float64)


def iter_bootstrap_weights(n: int, n_boot: int, seed: int, chunk: int = 250) -> Any:
    """Yield (b, n) weight chunks of the seeded resamples, ``chunk`` at a time to bound memory."""
    idx = bootstrap_indices(n, n_boot, seed)
    for start in range(0, n_boot, chunk):
        yield indices_to_weights(idx[start : start + chunk], n)


def bootstrap_samples(
    y: np.ndarray, proba: np.ndarray, classes: Sequence[str], n_boot: int = 1000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Metric name -> (n_boot,) values on seeded bootstrap resamples of the samples."""
    chunks = [weighted_metrics(y, proba, classes, w) for w in iter_bootstrap_weights(len(y), n_boot, seed)]
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def percentile_ci(samples: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap ``samples`` (NaN resamples, e.g. an absent class, are dropped)."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(finite, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def metrics_with_ci(
    y: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, float]]:
    """Point estimate and percentile bootstrap CI of every metric.

    Args:
        y: (n,) integer labels indexing ``classes``.
        proba: (n, K) class probabilities; rows are renormalised to sum to 1.
        classes: K class names, in column order.
        n_boot: bootstrap resamples (use >= 1000 for reported intervals).
        seed: seed of the resampling generator; the same seed gives the same intervals.
        level: confidence level of the interval.

    Returns:
        Metric name -> ``{"value", "lo", "hi"}``; ``n_valid`` is added when some resamples had no value.
    """
    proba = normalize_proba(proba)
    point = point_metrics(y, proba, classes)
    boot = bootstrap_samples(y, proba, classes, n_boot=n_boot, seed=seed)
    out: dict[str, dict[str, float]] = {}
    for name in metric_names(classes):
        lo, hi = percentile_ci(boot[name], level)
        entry = {"value": point[name], "lo": lo, "hi": hi}
        n_valid = int(np.isfinite(boot[name]).sum())
        if n_valid < n_boot:
            entry["n_valid"] = n_valid
        out[name] = entry
    return out
