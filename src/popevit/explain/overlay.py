"""Heatmap overlays and galleries (matplotlib, no pyplot state: every figure is a ``Figure`` saved and dropped).

A heatmap lives in the model input's coordinates, so it is drawn over the preprocessed image (head crop, square
pad, resize); the original scan is shown beside it. Each map is min-max scaled per image for display only; the
faithfulness numbers use the raw maps. Lesion masks, when known (phantoms), are outlined in cyan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from popevit.io import atomic_savefig

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from popevit.explain.explain import Item

CMAP = "jet"
ALPHA = 0.45
OK, WRONG, UNKNOWN = "#1b7f3b", "#c62828", "#222222"
METHOD_TITLES = {"rollout": "attention rollout", "grad-rollout": "gradient rollout", "gradcam": "Grad-CAM"}

Entry = tuple["Item", np.ndarray, np.ndarray]  # (item, (S, S) map, (K,) probabilities)


def normalise(heat: np.ndarray) -> np.ndarray:
    """Min-max scale a map to [0, 1] for display (a constant map becomes zeros)."""
    heat = np.asarray(heat, np.float32)
    lo, hi = float(heat.min()), float(heat.max())
    return (heat - lo) / (hi - lo) if hi - lo > 1e-12 else np.zeros_like(heat)


def _window(gray: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(gray, (0.5, 99.5))
    return float(lo), float(max(hi, lo + 1e-6))


def draw_overlay(ax: Axes, pre: np.ndarray, heat: np.ndarray, mask: np.ndarray | None = None) -> None:
    """Preprocessed image (S, S) in gray with the normalised heatmap on top and the mask outline."""
    ax.imshow(pre, cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
    ax.imshow(normalise(heat), cmap=CMAP, alpha=ALPHA, vmin=0, vmax=1, interpolation="bilinear")
    if mask is not None and mask.any():
        ax.contour(mask.astype(np.float32), levels=[0.5], colors="cyan", linewidths=0.9)
    ax.set_axis_off()


def _status(label: int, pred: int) -> str:
    return UNKNOWN if label < 0 else (OK if label == pred else WRONG)


def caption(item: Item, proba: np.ndarray, classes: Sequence[str]) -> str:
    """``true X | pred Y 0.93`` (``true ?`` when unknown)."""
    pred = int(np.argmax(proba))
    true = classes[item.label] if item.label >= 0 else "?"
    return f"true {true}\npred {classes[pred]} {proba[pred]:.2f}"


def save_explanation(
    path: Path,
    item: Item,
    maps: Mapping[str, np.ndarray],
    proba: np.ndarray,
    classes: Sequence[str],
    target: int,
) -> Path:
    """One image: original | model input | one overlay per method, with labels and class probabilities.

    Args:
        path: PNG to write.
        item: the image (original, preprocessed pixels, label, optional mask).
        maps: method name -> (S, S) map.
        proba: (K,) class probabilities.
        classes: K class names.
        target: the class index the maps explain.

    Returns:
        ``path``.
    """
    n = 2 + len(maps)
    fig = Figure(figsize=(2.6 * n, 3.35), dpi=110, layout="constrained")
    axes = fig.subplots(1, n)
    lo, hi = _window(item.original)
    axes[0].imshow(item.original, cmap="gray", vmin=lo, vmax=hi, interpolation="bilinear")
    axes[0].set_title(f"original {item.original.shape[1]}x{item.original.shape[0]}", fontsize=9)
    axes[0].set_axis_off()
    axes[1].imshow(item.pre, cmap="gray", vmin=0, vmax=255, interpolation="bilinear")
    if item.mask is not None and item.mask.any():
        axes[1].contour(item.mask.astype(np.float32), levels=[0.5], colors="cyan", linewidths=0.9)
    axes[1].set_title(f"model input {item.pre.shape[0]}x{item.pre.shape[1]}", fontsize=9)
    axes[1].set_axis_off()
    for ax, (name, heat) in zip(axes[2:], maps.items(), strict=True):
        draw_overlay(ax, item.pre, heat, item.mask)
        ax.set_title(METHOD_TITLES.get(name, name), fontsize=9)
    pred = int(np.argmax(proba))
    true = classes[item.label] if item.label >= 0 else "unknown"
    probs = "   ".join(f"{c} {p:.2f}" for c, p in zip(classes, proba, strict=True))
    fig.suptitle(
        f"{Path(item.path).name}   true: {true}   predicted: {classes[pred]} ({proba[pred]:.2f})   "
        f"explaining: {classes[target]}\n{probs}",
        fontsize=9, color=_status(item.label, pred),
    )  # fmt: skip
    atomic_savefig(fig, path)
    return path


def _empty(fig: Figure, text: str) -> None:
    ax = fig.add_subplot(1, 1, 1)
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=11, color="#555555")
    ax.set_axis_off()


def save_gallery(path: Path, entries: Sequence[Entry], classes: Sequence[str], *, title: str, ncols: int = 4) -> Path:
    """A grid of overlays with ``true``/``pred`` captions (red = wrong, green = right).

    Args:
        path: PNG to write.
        entries: ``(item, (S, S) map, (K,) probabilities)`` in display order.
        classes: K class names.
        title: figure title.
        ncols: grid columns.

    Returns:
        ``path``.
    """
    ncols = max(1, min(ncols, len(entries)))
    nrows = max(1, -(-len(entries) // ncols))
    fig = Figure(figsize=(2.3 * ncols if entries else 6, 2.65 * nrows + 0.4), dpi=110, layout="constrained")
    if not entries:
        _empty(fig, "no misclassified images among those explained")
    else:
        axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
        for ax in axes[len(entries) :]:
            ax.set_axis_off()
        for ax, (item, heat, proba) in zip(axes, entries, strict=False):
            draw_overlay(ax, item.pre, heat, item.mask)
            ax.set_title(caption(item, proba, classes), fontsize=8, color=_status(item.label, int(np.argmax(proba))))
    fig.suptitle(title, fontsize=11)
    atomic_savefig(fig, path)
    return path


def save_confident_gallery(
    path: Path, rows: Mapping[str, Sequence[Entry]], classes: Sequence[str], *, title: str
) -> Path:
    """One row per class: that class's most confident correct predictions, left to right.

    Args:
        path: PNG to write.
        rows: class name -> entries (at most ``ncols`` shown).
        classes: K class names (row order).
        title: figure title.

    Returns:
        ``path``.
    """
    ncols = max([len(v) for v in rows.values()] + [1])
    nrows = len(classes)
    fig = Figure(figsize=(2.3 * ncols + 0.6, 2.45 * nrows + 0.4), dpi=110, layout="constrained")
    axes = np.array(fig.subplots(nrows, ncols, squeeze=False))
    for r, cls in enumerate(classes):
        entries = rows.get(cls, [])
        for c in range(ncols):
            ax = axes[r, c]
            if c < len(entries):
                item, heat, proba = entries[c]
                draw_overlay(ax, item.pre, heat, item.mask)
                ax.set_title(f"p({cls}) = {proba[classes.index(cls)]:.2f}", fontsize=8, color=OK)
            else:
                ax.set_axis_off()
                if c == 0:
                    ax.text(0.5, 0.5, "no correct\nprediction", ha="center", va="center", fontsize=8, color="#777777",
                            transform=ax.transAxes)  # fmt: skip
        axes[r, 0].text(-0.08, 0.5, cls, rotation=90, ha="right", va="center", fontsize=10, fontweight="bold",
                        transform=axes[r, 0].transAxes)  # fmt: skip
    fig.suptitle(title, fontsize=11)
    atomic_savefig(fig, path)
    return path
