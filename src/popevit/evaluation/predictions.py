"""Per-image predictions of one model: computed from a run's artefact, saved as ``predictions.csv``, reloaded.

``predictions.csv`` has one row per image: ``path``, ``label`` (true class name), ``predicted`` (arg-max class name)
and one ``p_<class>`` column per class in the model's output order, probabilities written with 9 significant digits.

torch is a heavy import: only inference (:func:`predict_proba`, :func:`resolve_device`) imports it, so reading
and writing predictions needs numpy alone.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PREDICTIONS = "predictions.csv"


@dataclass
class Predictions:
    """Probabilities of one model on a list of images.

    Attributes:
        paths: n image paths, as the data layer listed them.
        y: (n,) true class indices into ``classes``.
        proba: (n, K) class probabilities.
        classes: K class names, in column order.
        source_fingerprint: :meth:`popevit.data.manifest.Manifest.fingerprint` of the manifest they were made on,
            where known: what lets :func:`popevit.evaluation.compare.align` pair them with predictions on the same
            images stored in another folder. Not saved in ``predictions.csv``.
    """

    paths: list[str]
    y: np.ndarray
    proba: np.ndarray
    classes: list[str]
    source_fingerprint: str | None = None

    @property
    def pred(self) -> np.ndarray:
        return self.proba.argmax(axis=1)

    @property
    def correct(self) -> np.ndarray:
        return self.pred == self.y

    def subset(self, mask: np.ndarray) -> Predictions:
        return Predictions(
            [p for p, m in zip(self.paths, mask, strict=True) if m],
            self.y[mask],
            self.proba[mask],
            self.classes,
            self.source_fingerprint,
        )

    def reorder(self, paths: Sequence[str]) -> Predictions:
        """Rows reordered to ``paths`` (which must be exactly this set of paths)."""
        index = {p: i for i, p in enumerate(self.paths)}
        rows = np.array([index[p] for p in paths], dtype=np.int64)
        return Predictions(list(paths), self.y[rows], self.proba[rows], self.classes, self.source_fingerprint)

    def with_class_order(self, classes: Sequence[str]) -> Predictions:
        """Columns permuted to ``classes`` (the same names in another order)."""
        if sorted(classes) != sorted(self.classes):
            raise ValueError(f"cannot reorder classes {self.classes} to {list(classes)}: the names differ")
        perm = [self.classes.index(c) for c in classes]
        inv = np.argsort(perm)
        return Predictions(self.paths, inv[self.y], self.proba[:, perm], list(classes), self.source_fingerprint)

    def save(self, path: Path) -> Path:
        from popevit.io import atomic_write_csv

        pred = self.pred
        header = ["path", "label", "predicted", *[f"p_{c}" for c in self.classes]]
        rows = (
            [p, self.classes[self.y[i]], self.classes[pred[i]], *(f"{v:.9g}" for v in self.proba[i])]
            for i, p in enumerate(self.paths)
        )
        return atomic_write_csv(path, [header, *rows])

    @classmethod
    def load(cls, path: Path) -> Predictions:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{str(path)!r} not found; run `popevit evaluate RUN` first")
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows = list(reader)
        pcols = [h for h in header if h.startswith("p_")]
        if header[:3] != ["path", "label", "predicted"] or not pcols:
            raise ValueError(f"{str(path)!r} is not a popevit predictions.csv (header {header[:5]}...)")
        classes = [h[2:] for h in pcols]
        y = np.array([classes.index(r[1]) for r in rows], dtype=np.int64)
        proba = np.array([[float(v) for v in r[3 : 3 + len(classes)]] for r in rows], dtype=np.float64)
        return cls([r[0] for r in rows], y, proba.reshape(len(rows), len(classes)), classes)


def resolve_device(device: str | None) -> Any:
    """``--device`` as a ``torch.device``, checked: default CUDA when available; a device this machine lacks (or a
    misspelt one) is a ``ValueError`` naming the option, not a CUDA error in the middle of a run."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0 or (dev.index is not None and dev.index >= n):
            raise ValueError(f"--device {device!r}: this machine has {n} CUDA device(s) visible; use --device cpu")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device!r}: MPS is not available here; use --device cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {device!r}: popevit runs on cpu, cuda or mps")
    return dev


def predict_proba(
    model: Any, dataset: Any, *, batch_size: int = 64, tta: bool = False, device: str | None = None
) -> np.ndarray:
    """Softmax probabilities of ``model`` on every item of ``dataset``, in order.

    Test-time augmentation (``tta=True``) averages the softmax probabilities of the image and its horizontal flip.
    Left-right flipping is the one augmentation that preserves the label of an axial brain slice (the hemispheres are
    near-mirror images) and it is in the training augmentation (``augment.hflip``); averaging probabilities rather
    than logits keeps the result a proper distribution.

    Args:
        model: ``nn.Module`` mapping (B, C, S, S) images to (B, K) logits.
        dataset: map-style dataset yielding ``(x, y)`` with x (C, S, S).
        batch_size: inference batch size.
        tta: average over the horizontal flip.
        device: ``"cpu"``, ``"cuda"``, ...; default CUDA when available.

    Returns:
        (n, K) float64 probabilities.
    """
    import torch
    from torch.utils.data import DataLoader

    from popevit.progress import track

    dev = resolve_device(device)
    model = model.to(dev).eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0)
    out = []
    with torch.inference_mode():
        for batch in track(loader, f"predicting {len(dataset)} images" + (" (+ flipped)" if tta else "")):
            x = batch[0].to(dev, dtype=torch.float32)  # (B, C, S, S)
            p = model(x).float().softmax(-1)  # (B, K)
            if tta:
                p = 0.5 * (p + model(x.flip(-1)).float().softmax(-1))
            out.append(p.cpu().double().numpy())
    if not out:
        raise ValueError("the dataset is empty: nothing to predict")
    return np.concatenate(out)
