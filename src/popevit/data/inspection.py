"""``popevit data inspect``: what is in a data folder, and what is wrong with it.

Counts per class, colour modes, size distribution per class (the size shortcut of the Kaggle set shows up here),
format/extension mismatches, unreadable files with reasons, exact-duplicate groups (SHA-256) and near-duplicate
groups (256-bit canonical pHash, Hamming <= ``NEAR_THRESHOLD``, see :mod:`popevit.data.dedup`), within and across
classes, with label conflicts flagged.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from popevit.data.checks import Skip, format_skipped
from popevit.data.dedup import NEAR_THRESHOLD, UnionFind, exact_groups, fingerprint_files, near_pairs
from popevit.data.discover import discover


def _group_entry(idx: list[int], paths: list[Path], labels: list[str]) -> dict[str, Any]:
    labs = sorted({labels[i] for i in idx})
    return {"paths": [str(paths[i]) for i in idx], "labels": [labels[i] for i in idx], "conflict": len(labs) > 1}


def inspect_data(
    data: Path,
    *,
    class_map: dict[str, str] | None = None,
    classes: list[str] | None = None,
    binary: bool = False,
    near_threshold: int | None = NEAR_THRESHOLD,
    cache_dir: Path | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Inspect a data folder.

    Args:
        data: data folder (any layout of :func:`popevit.data.discover`).
        class_map, classes, binary: task definition.
        near_threshold: pHash Hamming threshold (``None`` skips near-duplicate search).
        cache_dir: fingerprint cache root (``None``: no cache).
        workers: fingerprinting processes.

    Returns:
        A JSON-serialisable report (keys documented in the module docstring and the README).
    """
    disc = discover(data, class_map=class_map, classes=classes, binary=binary)
    fps = fingerprint_files([s.path for s in disc.samples], cache_dir=cache_dir, workers=workers)
    paths = [s.path for s in disc.samples]
    labels = [s.label for s in disc.samples]
    ok = [i for i, fp in enumerate(fps) if fp.ok]

    modes: dict[str, dict[str, int]] = {c: {} for c in disc.classes}
    sizes: dict[str, dict[str, Any]] = {}
    for c in disc.classes:
        idx = [i for i in ok if labels[i] == c]
        modes[c] = dict(sorted(Counter(fps[i].mode for i in idx).items()))
        if not idx:
            sizes[c] = {}
            continue
        w = np.array([fps[i].width for i in idx])
        h = np.array([fps[i].height for i in idx])
        common = Counter(f"{fps[i].width}x{fps[i].height}" for i in idx).most_common(3)
        sizes[c] = {
            "width": [int(w.min()), int(np.median(w)), int(w.max())],
            "height": [int(h.min()), int(np.median(h)), int(h.max())],
            "most_common": [[s, n] for s, n in common],
            "fraction_most_common": round(common[0][1] / len(idx), 4),
        }

    ex = [[ok[k] for k in g] for g in exact_groups([fps[i] for i in ok])]
    report: dict[str, Any] = {
        "root": str(disc.root),
        "layout": disc.layout,
        "num_images": len(paths),
        "num_readable": len(ok),
        "classes": disc.counts(),
        "splits": {},
        "modes": modes,
        "sizes": sizes,
        "format_mismatch": [str(fps[i].path) for i in ok if fps[i].format_mismatch],
        "unreadable": [str(fp.path) for fp in fps if not fp.ok],
        "unreadable_reasons": {str(fp.path): fp.error for fp in fps if not fp.ok},
        "ignored": [str(p) for p in disc.ignored],
        "skipped": [{"path": str(k.path), "reason": k.reason} for k in disc.skipped],
        "warnings": disc.warnings,
        "exact_duplicate_groups": len(ex),
        "exact_redundant_copies": sum(len(g) - 1 for g in ex),
        "exact_groups": [_group_entry(g, paths, labels) for g in ex],
        "near_threshold": near_threshold,
    }
    if disc.layout == "official_split":
        for s in disc.samples:
            report["splits"].setdefault(s.split, Counter())[s.label] += 1
        report["splits"] = {k: dict(sorted(v.items())) for k, v in sorted(report["splits"].items())}

    near_groups: list[list[int]] = []
    pairs = []
    if near_threshold is not None and near_threshold >= 0:
        ok_fps = [fps[i] for i in ok]
        pairs = [(ok[i], ok[j], d) for i, j, d in near_pairs(ok_fps, threshold=near_threshold)]
        uf = UnionFind(len(paths))
        for i, j, _ in pairs:
            uf.union(i, j)
        # A near group joins at least two different contents (pure byte-identical groups are exact groups).
        near_groups = [g for g in uf.groups() if len({fps[i].content_hash for i in g}) > 1]
    non_exact = [(i, j, d) for i, j, d in pairs if fps[i].content_hash != fps[j].content_hash]
    report.update(
        {
            "near_duplicate_groups": len(near_groups),
            "near_duplicate_pairs": len(non_exact),
            "near_pairs_within_class": sum(labels[i] == labels[j] for i, j, _ in non_exact),
            "near_pairs_across_class": sum(labels[i] != labels[j] for i, j, _ in non_exact),
            "images_in_near_groups": sum(len(g) for g in near_groups),
            "largest_near_group": max((len(g) for g in near_groups), default=0),
            "near_groups": [_group_entry(g, paths, labels) for g in near_groups],
            "label_conflicts": {
                "exact": sum(len({labels[i] for i in g}) > 1 for g in ex),
                "near": sum(len({labels[i] for i in g}) > 1 for g in near_groups),
            },
        }
    )
    if len(ok) >= 10 and len({labels[i] for i in ok}) > 1:
        from popevit.data.confound import confound_report, read_traits

        traits, _ = read_traits([paths[i] for i in ok], workers=workers)
        label_of = {paths[i]: labels[i] for i in ok}
        report["source_confound"] = confound_report(traits, [label_of[t.path] for t in traits])
    return report


def format_report(r: dict[str, Any]) -> str:
    """A readable text table of an :func:`inspect_data` report."""
    lines = [f"data: {r['root']}  ({r['layout']}, {r['num_images']} images, {r['num_readable']} readable)", ""]
    lines.append(f"{'class':<14}{'count':>7}  {'modes':<28}{'sizes (w min/med/max)':<24}most common size")
    for c, n in r["classes"].items():
        modes = ", ".join(f"{m}:{k}" for m, k in r["modes"].get(c, {}).items())
        s = r["sizes"].get(c) or {}
        wspan = "/".join(map(str, s.get("width", []))) or "-"
        mc = f"{s['most_common'][0][0]} ({100 * s['fraction_most_common']:.0f}%)" if s else "-"
        lines.append(f"{c:<14}{n:>7}  {modes:<28}{wspan:<24}{mc}")
    for split, counts in r.get("splits", {}).items():
        lines.append(f"  split {split}: " + ", ".join(f"{c}={n}" for c, n in counts.items()))
    lines += [
        "",
        f"format mismatches (content vs extension): {len(r['format_mismatch'])}",
        *(f"  {p}" for p in r["format_mismatch"][:10]),
        f"unreadable files: {len(r['unreadable'])}",
        *(f"  {p}: {why}" for p, why in list(r["unreadable_reasons"].items())[:20]),
        format_skipped([Skip(Path(k["path"]), k["reason"]) for k in r.get("skipped", [])], r["root"])
        or "skipped: nothing",
        f"exact duplicates: {r['exact_duplicate_groups']} groups, {r['exact_redundant_copies']} redundant copies, "
        f"{r['label_conflicts']['exact']} with conflicting labels",
        f"near duplicates (pHash-256 Hamming <= {r['near_threshold']}): {r['near_duplicate_groups']} groups, "
        f"{r['images_in_near_groups']} images, largest {r['largest_near_group']}; pairs within class "
        f"{r['near_pairs_within_class']}, across classes {r['near_pairs_across_class']}; "
        f"{r['label_conflicts']['near']} groups with conflicting labels",
    ]
    lines += [f"warning: {w}" for w in r.get("warnings", [])]
    if r.get("source_confound"):
        from popevit.data.confound import format_confound

        lines += ["", format_confound(r["source_confound"])]
    return "\n".join(lines)
