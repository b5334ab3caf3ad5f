"""``popevit data audit``: leakage between sets and shortcut probes.

Leakage: exact (same SHA-256, always searched) and near (canonical pHash Hamming <= threshold,
:mod:`popevit.data.dedup`; a negative threshold skips them) matches between a training set and a test set, or between
the splits of a manifest. Every matching pair is listed.

Source confound (:mod:`popevit.data.confound`): acquisition clusters from what the files betray without their labels,
the class x cluster table, a warning for every class that lives in clusters of its own, and two probes that must stay
near chance on a sound data set: a classifier on the intensity histogram only, and one on the image with the head
masked out.

Shortcut probe: the cross-validated accuracy of a random forest on *metadata only* (width, height, aspect, colour
mode, file size, global mean and std), next to the majority-class rate. On the Kaggle set the raw probe is far above
chance because tumour images are almost all 512x512. The same probe on the preprocessed images (same features of
the cached S x S array: size, aspect, mode and byte size are now constant) should fall towards chance. Folds are
grouped by duplicate cluster (``StratifiedGroupKFold``), so copies never sit on both sides of a fold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from popevit.config import PreprocessConfig
from popevit.data.dedup import NEAR_THRESHOLD, Fingerprint, duplicate_clusters, fingerprint_files, near_pairs
from popevit.data.discover import discover
from popevit.data.manifest import EXCLUDED, read_manifest
from popevit.io import atomic_write_csv

_MODES = ("L", "RGB", "RGBA", "P")


@dataclass
class _Set:
    name: str
    paths: list[Path]
    labels: list[str]


def _load_sets(src: Path) -> list[_Set]:
    """A manifest gives one set per split; an official-split folder one per split; a plain folder one set."""
    src = Path(src)
    if src.is_file():
        man = read_manifest(src)
        out = []
        for split in ("train", "val", "test"):
            rows = man.select(split)
            if rows:
                out.append(_Set(split, [r.path for r in rows], [r.label for r in rows]))
        return out
    disc = discover(src)
    names = sorted({s.split for s in disc.samples if s.split}, key=("train", "val", "test").index)
    if not names:
        return [_Set("all", [s.path for s in disc.samples], [s.label for s in disc.samples])]
    return [
        _Set(n, [s.path for s in disc.samples if s.split == n], [s.label for s in disc.samples if s.split == n])
        for n in names
    ]


def _features_raw(fps: list[Fingerprint]) -> np.ndarray:
    rows = []
    for fp in fps:
        mode = [float(fp.mode == m) for m in _MODES] + [float(fp.mode not in _MODES)]
        rows.append([fp.width, fp.height, fp.width / max(fp.height, 1), fp.file_size, fp.mean, fp.std, *mode])
    return np.array(rows, dtype=np.float64)


def _features_preprocessed(arrays: list[np.ndarray], mode: str) -> np.ndarray:
    rows = []
    for a in arrays:
        onehot = [float(mode == m) for m in _MODES] + [float(mode not in _MODES)]
        rows.append(
            [a.shape[1], a.shape[0], a.shape[1] / a.shape[0], a.nbytes, float(a.mean()), float(a.std()), *onehot]
        )
    return np.array(rows, dtype=np.float64)


def shortcut_probe(x: np.ndarray, y: list[str], groups: list[int], seed: int = 0) -> float:
    """Grouped, stratified 5-fold CV accuracy of a random forest on features ``x`` (N, F)."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_score

    counts = np.unique(y, return_counts=True)[1]
    folds = int(min(5, counts.min()))
    if folds < 2:
        raise ValueError(f"shortcut probe needs >= 2 images per class, got class counts {counts.tolist()}")
    clf = RandomForestClassifier(n_estimators=100, min_samples_leaf=2, random_state=seed, n_jobs=1)
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(clf, x, np.asarray(y), groups=groups, cv=cv).mean())


def _cross_pairs(a: list[Fingerprint], b: list[Fingerprint], threshold: int | None) -> list[tuple[int, int, int]]:
    """``(i, j, hamming)`` for every exact (same content hash, whatever the threshold) and near pair of a x b."""
    in_b: dict[str, list[int]] = {}
    for j, fp in enumerate(b):
        in_b.setdefault(fp.content_hash, []).append(j)
    exact = {(i, j) for i, fp in enumerate(a) for j in in_b.get(fp.content_hash, [])}
    near = [] if threshold is None else near_pairs(a, b, threshold=threshold)
    dist = {(i, j): d for i, j, d in near}
    return [(i, j, dist.get((i, j), 0)) for i, j in sorted(exact | set(dist))]


def audit(
    train: Path,
    test: Path | None = None,
    *,
    near_threshold: int | None = NEAR_THRESHOLD,
    pairs_csv: Path | None = None,
    preprocess: PreprocessConfig | None = None,
    cache_dir: Path | None = None,
    workers: int | None = None,
    seed: int = 0,
    probe: bool = True,
    confound: bool = True,
) -> dict[str, Any]:
    """Audit leakage and shortcuts.

    Args:
        train: a data folder or a manifest CSV.
        test: optional external test folder; compared against every usable image of ``train``.
        near_threshold: pHash Hamming threshold; ``None`` or negative: exact duplicates only (as ``data split``).
        pairs_csv: where to list every leaking pair (``None``: not written).
        preprocess: preprocessing for the preprocessed probe (default: :class:`PreprocessConfig`).
        cache_dir: cache root for fingerprints and preprocessed arrays (``None``: default cache dir).
        workers: processes for decoding.
        seed: seed of the probes' folds and forests.
        probe: run the shortcut probes.
        confound: cluster the files by acquisition traits and warn about classes that live in their own clusters
            (:func:`popevit.data.confound.confound_report`); with ``probe``, also the histogram and masked-head probes.

    Returns:
        ``cross_exact``, ``cross_near`` (pair counts over all comparisons), ``comparisons`` (per pair of sets),
        ``shortcut_raw``, ``shortcut_preprocessed``, ``majority``, ``num_images``, ``source_confound`` and ``probes``
        (probe name -> ``accuracy``, ``chance`` (the majority-class rate) and ``shortcut``: above chance by
        :data:`popevit.data.confound.PROBE_MARGIN` or more).
    """
    from popevit.data.cache import default_cache_dir
    from popevit.data.dataset import ImageDataset

    for flag, src in (("--train", train), ("--test", test)):
        if src is not None and not Path(src).exists():
            raise ValueError(f"{flag} {str(src)!r} does not exist; pass a data folder or a manifest CSV")
    cache_root = default_cache_dir(cache_dir)
    sets = _load_sets(Path(train))
    comparisons: list[tuple[_Set, _Set]] = []
    if test is not None:
        whole = _Set("train", [p for s in sets for p in s.paths], [lab for s in sets for lab in s.labels])
        tests = _load_sets(Path(test))
        sets = [whole, _Set("test", [p for s in tests for p in s.paths], [lab for s in tests for lab in s.labels])]
        comparisons = [(sets[0], sets[1])]
    else:
        comparisons = [(a, b) for i, a in enumerate(sets) for b in sets[i + 1 :]]
    fp_of: dict[Path, Fingerprint] = {}
    every = sorted({p for s in sets for p in s.paths})
    for fp in fingerprint_files(every, cache_dir=cache_root, workers=workers):
        fp_of[fp.path] = fp

    if near_threshold is not None and near_threshold < 0:
        near_threshold = None
    report: dict[str, Any] = {"near_threshold": near_threshold, "comparisons": [], "cross_exact": 0, "cross_near": 0}
    all_pairs: list[list[Any]] = []
    for a, b in comparisons:
        fa = [fp_of[p] for p in a.paths if fp_of[p].ok]
        fb = [fp_of[p] for p in b.paths if fp_of[p].ok]
        exact = near = 0
        leaking: set[Path] = set()
        for i, j, d in _cross_pairs(fa, fb, near_threshold):
            kind = "exact" if fa[i].content_hash == fb[j].content_hash else "near"
            exact += kind == "exact"
            near += kind == "near"
            leaking.add(fb[j].path)
            all_pairs.append([a.name, str(fa[i].path), b.name, str(fb[j].path), kind, d])
        report["comparisons"].append(
            {
                "a": a.name,
                "b": b.name,
                "cross_exact": exact,
                "cross_near": near,
                "b_images_with_match": len(leaking),
                "b_images": len(fb),
            }
        )
        report["cross_exact"] += exact
        report["cross_near"] += near
    if pairs_csv is not None:
        header = ["set_a", "path_a", "set_b", "path_b", "kind", "hamming"]
        atomic_write_csv(pairs_csv, [header, *all_pairs], lineterminator="\n")
        report["pairs_csv"] = str(pairs_csv)

    # Probes on the training source (every usable image of `train`).
    src = (
        sets[0]
        if test is not None
        else _Set("all", [p for s in sets for p in s.paths], [x for s in sets for x in s.labels])
    )
    keep = [i for i, p in enumerate(src.paths) if fp_of[p].ok]
    fps = [fp_of[src.paths[i]] for i in keep]
    labels = [src.labels[i] for i in keep]
    report["num_images"] = len(fps)
    values, counts = np.unique(labels, return_counts=True)
    report["majority"] = float(counts.max() / counts.sum()) if len(labels) else 0.0
    report["classes"] = {str(v): int(n) for v, n in zip(values, counts, strict=True)}
    if probe and len(values) > 1:
        groups, _ = duplicate_clusters(fps, near_threshold)
        report["shortcut_raw"] = shortcut_probe(_features_raw(fps), labels, groups, seed)
        cfg = preprocess or PreprocessConfig()
        ds = ImageDataset([fp.path for fp in fps], [0] * len(fps), cfg, cache_dir=cache_root,
                          content_hashes=[fp.content_hash for fp in fps])  # fmt: skip
        bad = dict(ds.prepare(workers=workers))
        ok = [i for i, p in enumerate(ds.paths) if p not in bad]
        x = _features_preprocessed([ds.array(i) for i in ok], "L")
        report["shortcut_preprocessed"] = shortcut_probe(x, [labels[i] for i in ok], [groups[i] for i in ok], seed)
        report["preprocess"] = cfg.model_dump(mode="json")
    else:
        report["shortcut_raw"] = report["shortcut_preprocessed"] = None
    if confound and len(values) > 1:
        report.update(_source_confound(fps, labels, near_threshold, workers, seed, probe, report))
    report["excluded_in_manifest"] = len(read_manifest(train).select(EXCLUDED)) if Path(train).is_file() else 0
    return report


def _source_confound(
    fps: list[Fingerprint],
    labels: list[str],
    near_threshold: int | None,
    workers: int | None,
    seed: int,
    probe: bool,
    report: dict[str, Any],
) -> dict[str, Any]:
    """``source_confound`` and ``probes`` of the audit (see :mod:`popevit.data.confound`)."""
    from popevit.data.confound import PROBE_MARGIN, confound_report, probe_features, read_traits

    traits, _ = read_traits([fp.path for fp in fps], workers=workers)
    label_of = dict(zip((fp.path for fp in fps), labels, strict=True))
    y = [label_of[t.path] for t in traits]
    out: dict[str, Any] = {"source_confound": confound_report(traits, y, seed=seed)}
    if probe:
        group_of = dict(zip((fp.path for fp in fps), duplicate_clusters(fps, near_threshold)[0], strict=True))
        groups = [group_of[t.path] for t in traits]
        chance = float(np.unique(y, return_counts=True)[1].max() / len(y))
        probes = {name: shortcut_probe(x, y, groups, seed) for name, x in probe_features(traits).items()}
        probes["metadata_raw"] = report.get("shortcut_raw")
        probes["metadata_preprocessed"] = report.get("shortcut_preprocessed")
        out["probes"] = {
            k: {"accuracy": v, "chance": chance, "shortcut": v >= chance + PROBE_MARGIN}
            for k, v in probes.items()
            if v is not None
        }
    return out


def format_audit(r: dict[str, Any]) -> str:
    """Readable summary of an :func:`audit` report."""
    t = r["near_threshold"]
    near = "near duplicates not searched" if t is None else f"near = pHash-256 Hamming <= {t}"
    lines = [f"leakage (exact = same bytes, {near}):"]
    if not r["comparisons"]:
        lines.append("  only one set: nothing to compare (pass --test DIR or a manifest)")
    for c in r["comparisons"]:
        lines.append(f"  {c['a']} vs {c['b']}: {c['cross_exact']} exact pairs, {c['cross_near']} near pairs; "
                     f"{c['b_images_with_match']}/{c['b_images']} {c['b']} images have a match")  # fmt: skip
    if r.get("pairs_csv"):
        lines.append(f"  pairs listed in {r['pairs_csv']}")
    lines.append(f"shortcut probe on {r['num_images']} images (random forest on size/aspect/mode/bytes/mean/std):")
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    lines.append(f"  raw files:            {fmt(r['shortcut_raw'])}")
    lines.append(f"  preprocessed images:  {fmt(r['shortcut_preprocessed'])}")
    lines.append(f"  majority-class rate:  {fmt(r['majority'])}")
    if r.get("source_confound"):
        from popevit.data.confound import format_confound

        lines.append(format_confound(r["source_confound"]))
    if r.get("probes"):
        lines.append("probes that must stay near chance (grouped 5-fold CV, random forest):")
        names = {
            "histogram": "intensity histogram only",
            "masked_head": "image with the head masked out",
            "metadata_raw": "file metadata (raw)",
            "metadata_preprocessed": "metadata of preprocessed images",
        }
        how = {"histogram": "from the intensity histogram", "masked_head": "without looking at the head"}
        for k, p in r["probes"].items():
            flag = (
                f"  <- SHORTCUT: the class is predictable {how.get(k, 'from file metadata')}" if p["shortcut"] else ""
            )
            lines.append(f"  {names.get(k, k):<34}{p['accuracy']:.3f} (chance {p['chance']:.3f}){flag}")
    return "\n".join(lines)
