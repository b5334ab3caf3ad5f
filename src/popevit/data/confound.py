"""Source-confound audit: do the classes live in their own acquisition clusters?

A data set compiled from several sources can give each class its own source. The Kaggle Brain Tumor MRI set does:
its ``notumor`` images came from Br35H (mostly axial T2/FLAIR, assorted sizes, web JPEGs), its tumour images from
figshare and SARTAJ (T1 with contrast, 512x512). A model can then reach 0.99 AUROC by telling the sources apart,
and fail on a tumour from the ``notumor`` source. Nothing in the labels shows it; what a file betrays without its
label does:

- **acquisition traits** (:func:`file_traits`): size, aspect, colour mode, format, the JPEG quantisation tables
  (they identify the encoder and its quality setting), whether EXIF is present, bytes per pixel, the shape of the
  intensity histogram, the background level and the share of dark pixels;
- **acquisition clusters** (:func:`confound_report`): k-means on the standardised traits (labels unused). The class x
  cluster table shows where each class lives; a class is *confounded* when most of its images sit in clusters that
  it dominates (>= ``DOMINANT`` of the cluster) while label permutations put far fewer there;
- **probes** that must stay near chance on a sound data set (grouped cross-validation, so duplicates never sit on
  both sides of a fold): a random forest that sees only the intensity histogram, and one that sees only the image
  with the head masked out (the border, frame, burnt-in text and background noise that remain).

The idea of auditing a data set for shortcuts before trusting a classifier follows DeGrave et al. (2021, Nature
Machine Intelligence 3:610, "AI for radiographic COVID-19 detection selects shortcuts over signal"), where models
told the sources of chest X-rays apart instead of the disease.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from popevit.data.decode import DecodeError, decode_bytes, read_bytes, to_gray
from popevit.data.preprocess import crop_pad_square, head_mask, resize

HIST_BINS = 32  # intensity histogram of the probe and of the traits
MASKED_SIDE = 16  # the masked-head probe sees the image outside the head at 16 x 16
DOMINANT = 0.7  # a cluster "belongs" to a class holding at least this share of its images
CONFOUNDED_SHARE = 0.5  # a class with at least this share of its images in its own clusters ...
NULL_MARGIN = 0.25  # ... and this much more than under label permutations is confounded
PROBE_MARGIN = 0.25  # a probe this far above the majority-class rate is a shortcut (phantom lesions alone give +0.15)
_MODES = ("L", "RGB", "RGBA", "P", "I;16", "I", "F")
_FORMATS = ("JPEG", "PNG", "TIFF", "BMP")


@dataclass(frozen=True)
class FileTraits:
    """What a file betrays about its origin without its label (see the module docstring)."""

    path: Path
    width: int
    height: int
    mode: str
    format: str
    quant: str  # digest of the JPEG quantisation tables; "" for other formats
    exif: bool
    bytes_per_pixel: float
    hist: tuple[float, ...]  # HIST_BINS shares of the grey levels (0..1 of the file's range)
    background: float  # median of the border, 0..1
    dark: float  # share of pixels below 5% of the range
    masked: tuple[int, ...]  # MASKED_SIDE**2 grey levels of the image outside the head (head set to 0)


def file_traits(path: Path) -> FileTraits:
    """Read one file's :class:`FileTraits` (raises :class:`popevit.data.decode.DecodeError` for a bad file)."""
    data = read_bytes(path)
    header = Image.open(io.BytesIO(data))
    quant = getattr(header, "quantization", None) or {}
    qdigest = hashlib.sha1(repr(sorted((k, list(v)) for k, v in quant.items())).encode()).hexdigest()[:10]
    img = decode_bytes(data, path, draft=(256, 256))
    gray = to_gray(img)
    top = 65535.0 if img.mode in ("I;16", "I") and gray.max() > 255 else 255.0
    g = np.clip(gray / top, 0.0, 1.0)
    hist = np.histogram(g, bins=HIST_BINS, range=(0.0, 1.0))[0] / g.size
    b = max(1, min(g.shape) // 100 + 1)
    border = np.concatenate([g[:b].ravel(), g[-b:].ravel(), g[:, :b].ravel(), g[:, -b:].ravel()])
    square = resize(crop_pad_square(g, crop_foreground=False), 64)  # the whole frame, padded square
    outside = np.where(head_mask(square), 0.0, square)
    small = resize(outside, MASKED_SIDE)
    return FileTraits(
        path=Path(path),
        width=header.width,
        height=header.height,
        mode=header.mode,
        format=header.format or "",
        quant=qdigest if quant else "",
        exif=len(header.getexif()) > 0,
        bytes_per_pixel=len(data) / max(1, header.width * header.height),
        hist=tuple(float(v) for v in hist),
        background=float(np.median(border)),
        dark=float((g < 0.05).mean()),
        masked=tuple(int(v) for v in np.round(np.clip(small, 0, 1) * 255).ravel()),
    )


def _traits_or_error(path: Path) -> FileTraits | tuple[Path, str]:
    try:
        return file_traits(path)
    except DecodeError as err:
        return path, err.reason
    except Exception as err:  # a hostile file is a listed bad file, never a crash
        return path, f"cannot read its traits ({type(err).__name__}: {err})"


def read_traits(paths: Sequence[Path], workers: int | None = None) -> tuple[list[FileTraits], list[tuple[Path, str]]]:
    """:func:`file_traits` of every path (in processes when there are many), and the files that failed, with why."""
    workers = workers if workers is not None else (os.cpu_count() or 1) if len(paths) > 200 else 1
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_traits_or_error, paths, chunksize=32))
    else:
        results = [_traits_or_error(p) for p in paths]
    ok = [r for r in results if isinstance(r, FileTraits)]
    bad = [r for r in results if not isinstance(r, FileTraits)]
    return ok, bad


def trait_matrix(traits: Sequence[FileTraits]) -> tuple[np.ndarray, list[str]]:
    """(N, F) standardised acquisition features for clustering, and their names.

    Categorical traits (mode, format, the eight most frequent quantisation tables) are one-hot; sizes are logged.
    """
    quants = [q for q, _ in Counter(t.quant for t in traits if t.quant).most_common(8)]
    names = ["log_width", "log_height", "log_aspect", "exif", "log_bytes_per_pixel", "background", "dark"]
    names += [f"mode={m}" for m in _MODES] + [f"format={f}" for f in _FORMATS] + [f"quant={q}" for q in quants]
    names += [f"hist_{i}" for i in range(HIST_BINS)]
    rows = []
    for t in traits:
        row = [np.log(t.width), np.log(t.height), np.log(t.width / t.height), float(t.exif),
               np.log(t.bytes_per_pixel + 1e-6), t.background, t.dark]  # fmt: skip
        row += [float(t.mode == m) for m in _MODES] + [float(t.format == f) for f in _FORMATS]
        row += [float(t.quant == q) for q in quants]
        row += list(np.sqrt(t.hist))  # sqrt: a histogram's shape, not its few largest bins
        rows.append(row)
    x = np.asarray(rows, dtype=np.float64)
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 1e-9, std, 1.0), names


def _own_share(table: np.ndarray) -> np.ndarray:
    """(K,) share of each class's images in clusters where that class is >= DOMINANT of the members; table (C, K)."""
    size = table.sum(axis=1, keepdims=True)
    owned = (table / np.maximum(size, 1)) >= DOMINANT  # (C, K)
    return (table * owned).sum(axis=0) / np.maximum(table.sum(axis=0), 1)


def _table(cluster: np.ndarray, y: np.ndarray, n_clusters: int, n_classes: int) -> np.ndarray:
    t = np.zeros((n_clusters, n_classes), dtype=np.int64)
    np.add.at(t, (cluster, y), 1)
    return t


def confound_report(
    traits: Sequence[FileTraits],
    labels: Sequence[str],
    *,
    n_clusters: int = 8,
    permutations: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Cluster the files by acquisition traits (labels unused) and test whether classes live in their own clusters.

    Args:
        traits: one :class:`FileTraits` per image.
        labels: the class of each image.
        n_clusters: k of k-means (at most one cluster per 5 images).
        permutations: label permutations for the null distribution of each class's own-cluster share.
        seed: seed of k-means and of the permutations.

    Returns:
        ``clusters`` (per cluster: size, counts per class, a description of its typical traits), ``classes``,
        ``own_share`` and its permutation ``null_p99`` per class, ``purity`` (accuracy of predicting the class from
        the cluster's majority) next to ``majority``, and ``confounded``: the classes flagged, each with a
        one-line ``warning``.
    """
    from sklearn.cluster import KMeans

    if len(traits) != len(labels):
        raise ValueError(f"got {len(traits)} traits for {len(labels)} labels; they must pair up")
    classes = sorted(set(labels))
    y = np.array([classes.index(lab) for lab in labels])
    x, _ = trait_matrix(traits)
    k = int(max(1, min(n_clusters, len(traits) // 5)))
    cluster = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    table = _table(cluster, y, k, len(classes))
    own = _own_share(table)
    rng = np.random.default_rng(seed)
    null = np.stack([_own_share(_table(cluster, rng.permutation(y), k, len(classes))) for _ in range(permutations)])
    null_p99 = np.quantile(null, 0.99, axis=0)
    majority = float(np.bincount(y).max() / len(y))
    purity = float(table.max(axis=1).sum() / len(y))
    flagged = []
    for j, c in enumerate(classes):
        if own[j] >= CONFOUNDED_SHARE and own[j] >= null_p99[j] + NULL_MARGIN:
            homes = [i for i in range(k) if table[i, j] and table[i, j] / table[i].sum() >= DOMINANT]
            flagged.append(
                {
                    "class": c,
                    "own_share": float(own[j]),
                    "null_p99": float(null_p99[j]),
                    "clusters": homes,
                    "warning": f"class {c!r} lives almost only in its own acquisition clusters: {own[j]:.0%} of its "
                    f"images sit in clusters {homes} that are >= {DOMINANT:.0%} {c!r} (under label permutations at "
                    f"most {null_p99[j]:.0%}); a model can learn the source instead of the class. Validate on "
                    "another source (popevit evaluate RUN --data OTHER --label-map ...)",
                }
            )
    return {
        "n": len(traits),
        "classes": classes,
        "n_clusters": k,
        "clusters": [
            _describe(i, [t for t, ci in zip(traits, cluster, strict=True) if ci == i], table[i], classes)
            for i in range(k)
        ],
        "own_share": {c: float(own[j]) for j, c in enumerate(classes)},
        "null_p99": {c: float(null_p99[j]) for j, c in enumerate(classes)},
        "purity": purity,
        "majority": majority,
        "confounded": flagged,
    }


def _describe(index: int, members: list[FileTraits], counts: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """A cluster's size, class counts and its most common size, mode and format (what a reader can check)."""
    top = lambda values: Counter(values).most_common(1)[0][0] if values else ""  # noqa: E731
    return {
        "cluster": index,
        "n": int(counts.sum()),
        "counts": {c: int(n) for c, n in zip(classes, counts, strict=True)},
        "typical": f"{top([f'{t.width}x{t.height}' for t in members])} {top([t.mode for t in members])} "
        f"{top([t.format for t in members])}, background {np.median([t.background for t in members]):.2f}",
    }


def probe_features(traits: Sequence[FileTraits]) -> dict[str, np.ndarray]:
    """The inputs of the two probes: ``histogram`` (N, HIST_BINS) and ``masked_head`` (N, MASKED_SIDE**2)."""
    return {
        "histogram": np.array([t.hist for t in traits], dtype=np.float64),
        "masked_head": np.array([t.masked for t in traits], dtype=np.float64),
    }


def format_confound(r: dict[str, Any]) -> str:
    """The class x cluster table and the warnings, as text."""
    classes = r["classes"]
    width = max(10, *(len(c) + 2 for c in classes))
    lines = [f"acquisition clusters (k-means on size, mode, format, JPEG tables, EXIF, histogram, background; "
             f"labels unused), {r['n']} images:"]  # fmt: skip
    lines.append(f"  {'cluster':<9}{'n':>6}" + "".join(f"{c:>{width}}" for c in classes) + "   typical file")
    for cl in r["clusters"]:
        lines.append(f"  {cl['cluster']:<9}{cl['n']:>6}" + "".join(f"{cl['counts'][c]:>{width}}" for c in classes)
                     + f"   {cl['typical']}")  # fmt: skip
    own = "  ".join(f"{c} {r['own_share'][c]:.0%} (null {r['null_p99'][c]:.0%})" for c in classes)
    lines.append(f"  images in clusters their class dominates: {own}")
    lines.append(f"  class from cluster alone: {r['purity']:.3f} accuracy (majority-class rate {r['majority']:.3f})")
    if r["confounded"]:
        lines += [f"WARNING: {f['warning']}" for f in r["confounded"]]
    else:
        lines.append("  no class lives in clusters of its own")
    return "\n".join(lines)
