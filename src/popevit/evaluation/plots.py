"""Evaluation figures as PNG files: confusion matrices, ROC curves, reliability diagram, probability histograms,
training curves.

Figures are built with matplotlib's object API (``matplotlib.figure.Figure``), never ``pyplot``, so no GUI backend
or global figure state is involved and plotting is safe in tests and worker processes. Every evaluation figure takes
a ``title`` naming what it shows (model, data, n; see :func:`figure_title`), drawn above the panels, so that a figure
copied out of a report still says what it is.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from popevit.evaluation.metrics import DEFAULT_N_BINS, _bin_index, expected_calibration_error
from popevit.io import atomic_savefig

DPI = 110


def figure_title(model: str | None, data: str | None, n: int | None) -> str:
    """An evaluation figure's title: ``"vit_p8_w64_d4_conv + pope · test split of manifest.csv · n = 200"``."""
    return " · ".join(s for s in (model, data, None if n is None else f"n = {n}") if s)


def _save(fig: Figure, path: Path, title: str | None = None) -> Path:
    path = Path(path)
    if title:
        fig.suptitle(title, fontsize=11, fontweight="bold")
        fig.tight_layout()
    return atomic_savefig(fig, path, dpi=DPI, bbox_inches="tight")


def plot_confusion(
    y: np.ndarray, pred: np.ndarray, classes: Sequence[str], path: Path, title: str | None = None
) -> Path:
    """Confusion matrix as counts (left) and row-normalised, i.e. per-true-class recall (right).

    Cell numbers are set at 15 pt so that they stay legible when the figure is shown at half its width.

    Args:
        y: (n,) true class indices.
        pred: (n,) predicted class indices.
        classes: K class names.
        path: output PNG.
        title: figure title (model, data, n).
    """
    K = len(classes)
    cm = np.zeros((K, K), dtype=np.int64)
    np.add.at(cm, (np.asarray(y), np.asarray(pred)), 1)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros((K, K)), where=rows > 0)
    fig = Figure(figsize=(5.2 * 2, 4.6))
    cell_font = 15 if K <= 6 else 10
    for ax, mat, panel, fmt in (
        (fig.add_subplot(1, 2, 1), cm, "counts", "{:d}"),
        (fig.add_subplot(1, 2, 2), norm, "row-normalised (recall)", "{:.2f}"),
    ):
        im = ax.imshow(mat, cmap="Blues", vmin=0, vmax=mat.max() if mat.max() > 0 else 1)
        ax.set_title(f"Confusion matrix, {panel}", fontsize=12)
        ax.set_xticks(range(K), classes, rotation=30, ha="right", fontsize=11)
        ax.set_yticks(range(K), classes, fontsize=11)
        ax.set_xlabel("predicted", fontsize=11)
        ax.set_ylabel("true", fontsize=11)
        thresh = (mat.max() if mat.max() > 0 else 1) / 2
        for i in range(K):
            for j in range(K):
                val = int(mat[i, j]) if fmt == "{:d}" else float(mat[i, j])
                ax.text(
                    j,
                    i,
                    fmt.format(val),
                    ha="center",
                    va="center",
                    color="white" if mat[i, j] > thresh else "black",
                    fontsize=cell_font,
                )
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return _save(fig, path, title)


def plot_roc(y: np.ndarray, proba: np.ndarray, classes: Sequence[str], path: Path, title: str | None = None) -> Path:
    """One-vs-rest ROC curve of every class, AUROC in the legend.

    Args:
        y: (n,) true class indices.
        proba: (n, K) probabilities.
        classes: K class names.
        path: output PNG.
        title: figure title (model, data, n).
    """
    from sklearn.metrics import roc_auc_score, roc_curve  # heavy, and only the ROC figure needs it

    fig = Figure(figsize=(5.5, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    aucs = []
    for k, c in enumerate(classes):
        target = np.asarray(y) == k
        if not 0 < target.sum() < len(target):
            continue
        fpr, tpr, _ = roc_curve(target, proba[:, k])
        auc = roc_auc_score(target, proba[:, k])
        aucs.append(auc)
        ax.plot(fpr, tpr, lw=1.6, label=f"{c} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    macro = f", macro AUROC {np.mean(aucs):.3f}" if aucs else ""
    ax.set_title(f"ROC, one-vs-rest{macro}")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    return _save(fig, path, title)


def plot_reliability(
    y: np.ndarray, proba: np.ndarray, path: Path, n_bins: int = DEFAULT_N_BINS, title: str | None = None
) -> Path:
    """Top-label reliability diagram (accuracy vs mean confidence per equal-width bin) with the bin counts below.

    Args:
        y: (n,) true class indices.
        proba: (n, K) probabilities.
        path: output PNG.
        n_bins: bins, as in the ECE of :mod:`popevit.evaluation.metrics`.
        title: figure title (model, data, n).
    """
    conf = proba.max(axis=1)
    correct = proba.argmax(axis=1) == np.asarray(y)
    idx = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=n_bins)
    acc = np.bincount(idx, weights=correct, minlength=n_bins) / np.maximum(count, 1)
    mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / np.maximum(count, 1)
    edges = np.linspace(0, 1, n_bins + 1)
    centers, width = (edges[:-1] + edges[1:]) / 2, 1.0 / n_bins
    fig = Figure(figsize=(5.5, 6.0))
    ax = fig.add_axes((0.12, 0.36, 0.83, 0.58))
    has = count > 0
    ax.bar(centers[has], acc[has], width=width, edgecolor="black", color="#4c72b0", alpha=0.8, label="accuracy")
    ax.scatter(mean_conf[has], acc[has], color="#dd8452", zorder=3, s=14, label="(mean confidence, accuracy)")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
    ece = expected_calibration_error(np.asarray(y), proba, n_bins)
    ax.set_title(f"Reliability (top label), ECE {ece:.3f}, {n_bins} bins")
    ax.set_ylabel("accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xticklabels([])
    ax.legend(loc="upper left", fontsize=8)
    ax2 = fig.add_axes((0.12, 0.08, 0.83, 0.24))
    ax2.bar(centers, count, width=width, edgecolor="black", color="#8c8c8c")
    ax2.set_xlim(0, 1)
    ax2.set_xlabel("confidence (max probability)")
    ax2.set_ylabel("images")
    if title:  # fixed axes (no tight_layout): the title goes in the top margin
        fig.suptitle(title, fontsize=11, fontweight="bold", y=1.0)
    return _save(fig, path)


def plot_prob_histograms(
    y: np.ndarray, proba: np.ndarray, classes: Sequence[str], path: Path, title: str | None = None
) -> Path:
    """For each class c, histograms of ``p_c`` on images of class c and on all other images (each as fractions).

    Args:
        y: (n,) true class indices.
        proba: (n, K) probabilities.
        classes: K class names.
        path: output PNG.
        title: figure title (model, data, n).
    """
    K = len(classes)
    cols = min(K, 2)
    rows = math.ceil(K / cols)
    fig = Figure(figsize=(5.0 * cols, 3.2 * rows))
    bins = np.linspace(0, 1, 21)
    for k, c in enumerate(classes):
        ax = fig.add_subplot(rows, cols, k + 1)
        target = np.asarray(y) == k
        for sel, color, label in ((~target, "#8c8c8c", "other"), (target, "#c44e52", c)):
            # each group normalised to fractions so a small class stays visible next to the rest
            weights = np.full(int(sel.sum()), 1.0 / max(int(sel.sum()), 1))
            ax.hist(proba[sel, k], bins=bins, weights=weights, alpha=0.6, color=color, label=f"{label} (n={sel.sum()})")
        ax.set_title(f"p({c})")
        ax.set_xlabel("probability")
        ax.set_ylabel("fraction of the group")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path, title)


def read_metrics_csv(path: Path) -> dict[str, list[tuple[float, float]]]:
    """Lightning CSVLogger ``metrics.csv`` -> metric -> [(epoch, value)], empty cells skipped.

    Rows logged without an epoch (the learning-rate monitor logs by step) get the epoch of the first later row
    that has both a step and an epoch.
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))

    def num(row: dict[str, str], key: str) -> float | None:
        try:
            return float(row.get(key) or "")
        except ValueError:
            return None

    anchors = sorted((s, e) for r in rows if (s := num(r, "step")) is not None and (e := num(r, "epoch")) is not None)
    steps = np.array([s for s, _ in anchors])
    series: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        x = num(row, "epoch")
        step = num(row, "step")
        if x is None and step is not None and len(steps):
            k = int(np.searchsorted(steps, step, side="left"))
            x = anchors[k][1] if k < len(anchors) else None
        if x is None:
            continue
        for key in row:
            if key in ("epoch", "step") or (v := num(row, key)) is None:
                continue
            series.setdefault(key, []).append((x, v))
    return series


def plot_training_curves(metrics_csv: Path, path: Path, title: str | None = None) -> Path | None:
    """Per-epoch loss (train vs val), headline metrics and learning rate from a Lightning ``metrics.csv``.

    Step-level columns (``*_step``) and per-class AUROCs are left out; ``*_epoch`` suffixes are dropped from labels.

    Args:
        metrics_csv: ``runs/NAME/logs/csv/metrics.csv``.
        path: output PNG.
        title: figure title (the run and its model).

    Returns:
        ``path``, or None when the file holds no epoch-level series.
    """
    series = {k.removesuffix("_epoch"): v for k, v in read_metrics_csv(metrics_csv).items() if not k.endswith("_step")}
    headline = ("acc", "bacc", "auroc_macro", "f1_macro")  # validation; of the training metrics only acc
    panels = [
        ("loss", {k: v for k, v in series.items() if k.split("/")[-1] == "loss"}),
        (
            "accuracy, balanced accuracy, macro AUROC, macro F1",
            {
                k: v
                for k, v in series.items()
                if k.split("/")[-1] in headline and (k.startswith("val/") or k == "train/acc")
            },
        ),
        ("learning rate", {k: v for k, v in series.items() if k.startswith("lr")}),
    ]
    panels = [(t, g) for t, g in panels if g]
    if not panels:
        return None
    fig = Figure(figsize=(5.2 * len(panels), 3.8))
    for i, (title, group) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for key, pts in sorted(group.items()):
            by_epoch: dict[float, list[float]] = {}
            for x, v in pts:
                by_epoch.setdefault(x, []).append(v)
            xs = sorted(by_epoch)
            style = "--" if key.startswith("train/") else "-"
            ax.plot(xs, [float(np.mean(by_epoch[x])) for x in xs], style, marker="o", ms=3, label=key)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path, title)


def plot_all(
    y: np.ndarray,
    proba: np.ndarray,
    classes: Sequence[str],
    out_dir: Path,
    prefix: str = "",
    title: str | None = None,
) -> dict[str, Path]:
    """Write every evaluation figure into ``out_dir``; returns figure name -> PNG path.

    Args:
        y: (n,) true class indices.
        proba: (n, K) probabilities.
        classes: K class names.
        out_dir: destination folder.
        prefix: file-name prefix (e.g. ``"dedup_"`` for the de-duplicated subset).
        title: title of every figure (model, data, n; see :func:`figure_title`).
    """
    out_dir = Path(out_dir)
    pred = proba.argmax(axis=1)
    return {
        "confusion_matrix": plot_confusion(y, pred, classes, out_dir / f"{prefix}confusion_matrix.png", title),
        "roc": plot_roc(y, proba, classes, out_dir / f"{prefix}roc.png", title),
        "reliability": plot_reliability(y, proba, out_dir / f"{prefix}reliability.png", title=title),
        "prob_histograms": plot_prob_histograms(y, proba, classes, out_dir / f"{prefix}prob_histograms.png", title),
    }
