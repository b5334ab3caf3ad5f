"""Duplicate-grouped, stratified, seeded splits written to a manifest CSV; and reading manifests back.

The anti-pattern is ``random_split`` over images: the Kaggle set has byte-identical and near-identical copies (and
adjacent slices of one series), so a per-image split leaks test images into training and inflates accuracy.
Here every file gets a *group* (its duplicate cluster, :func:`popevit.data.dedup.duplicate_clusters`), and whole
groups are assigned to ``train``/``val``/``test``:

1. per class (a group's class is its majority label), groups are shuffled with ``numpy.random.default_rng(seed)``
   and then ordered by size, largest first (stable, so ties keep the shuffled order);
2. each group goes to the split with the largest deficit ``ratio_k * n_class - count_k`` (ties: train, val, test).

This is deterministic: same files and seed -> byte-identical manifest. For official ``Training``/``Testing``
layouts the official test set is kept; the training part is split into train/val by the same rule, and training
images in a cluster that reaches into the official test set are written with split ``excluded`` (reason in
``note``). A given ``val`` folder is kept too, except that a group reaching over official train and val goes to
train, with a note on its val images. Unreadable files are written with split ``excluded`` and their decode error:
listed, never silently dropped. Paths are stored absolute; relative paths (hand-edited manifests) are resolved
against the manifest's folder.

Several sources in one split (``make_split(..., extra={"br35h": folder})``, ``popevit data split --add``): every
file of every source is fingerprinted and clustered together, so a duplicate that crosses two sources stays in one
split, and groups are stratified per (source, class). Rows then carry a ``source`` column. A source with only
tumour / no-tumour labels (Br35H's ``yes``/``no``) next to a source with tumour types keeps the *partial* label
``tumor``: "one of the tumour classes" (:meth:`Manifest.label_sets`); training uses it for the tumour-vs-no-tumour
marginal only (:class:`popevit.training.module.ClassifierModule`).

The manifest's format (rows, reading, writing, the leakage check) lives in :mod:`popevit.data.manifest_file`; its
names are re-exported here.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from popevit.data.checks import Skip, write_skipped
from popevit.data.dedup import NEAR_THRESHOLD, Fingerprint, duplicate_clusters, fingerprint_files
from popevit.data.discover import NO_TUMOR, Discovery, Sample, discover
from popevit.data.manifest_file import (  # re-exported: the manifest format's names are imported from here too
    EXCLUDED,
    SPLITS,
    Manifest,
    ManifestRow,
    below_common_folder,
    read_manifest,
    same_images,
    write_manifest,
)
from popevit.io import shown

__all__ = [
    "EXCLUDED",
    "SPLITS",
    "Manifest",
    "ManifestRow",
    "below_common_folder",
    "build_rows",
    "make_split",
    "read_manifest",
    "same_images",
    "skipped_file",
    "split_data",
    "split_skips",
    "write_manifest",
]


def _assign(groups: list[tuple[str, list[int]]], ratios: Sequence[float], rng: np.random.Generator) -> dict[str, str]:
    """Greedy largest-deficit assignment of (group id, members) of one class to splits."""
    total = sum(len(m) for _, m in groups)
    targets = np.array(ratios, dtype=float) * total
    counts = np.zeros(len(ratios))
    order = rng.permutation(len(groups))
    shuffled = [groups[i] for i in order]
    shuffled.sort(key=lambda g: -len(g[1]))  # stable: ties keep the seeded order
    out = {}
    for gid, members in shuffled:
        k = int(np.argmax(targets - counts))  # first max wins ties: train, val, test
        counts[k] += len(members)
        out[gid] = k
    return {gid: SPLITS[k] if len(ratios) == 3 else ("train", "val")[k] for gid, k in out.items()}


def _group_ids(fps: list[Fingerprint], cluster_of: list[int]) -> list[str]:
    """Stable group names: ``g`` + first 12 hex of the smallest content hash in the cluster."""
    best: dict[int, str] = {}
    for fp, c in zip(fps, cluster_of, strict=True):
        key = fp.content_hash or hashlib.sha256(str(fp.path).encode()).hexdigest()
        best[c] = min(best.get(c, key), key)
    return ["g" + best[c][:12] for c in cluster_of]


@dataclass
class _Placement:
    """Where :func:`build_rows` puts groups and rows before (and besides) the stratified assignment."""

    split_of: dict[str, str] = field(default_factory=dict)  # group -> split
    note_of: dict[int, str] = field(default_factory=dict)  # these rows are excluded
    moved_note: dict[int, str] = field(default_factory=dict)  # these rows keep their group's split
    kept: dict[int, ManifestRow] = field(default_factory=dict)  # rows of the base manifest, split and group unchanged
    joined: dict[int, str] = field(default_factory=dict)  # new rows that duplicate base rows: the base group they join
    to_split: dict[str, list[int]] = field(default_factory=dict)  # groups left to the stratified assignment


def build_rows(
    disc: Discovery,
    fps: list[Fingerprint],
    *,
    seed: int = 0,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    near_threshold: int | None = NEAR_THRESHOLD,
    sources: Sequence[str] | None = None,
    base: dict[Path, ManifestRow] | None = None,
) -> list[ManifestRow]:
    """Assign every discovered file to a split by duplicate group (see the module docstring).

    ``sources`` names the source of each sample when several were discovered together (groups are then stratified per
    source and class). ``base`` (resolved path -> row of an earlier manifest) keeps those images' split and group; a
    new image joins the split of the base images it duplicates, and is excluded when they lie in several splits.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise ValueError(f"ratios must be three non-negative numbers summing to 1 (train,val,test), got {ratios}")
    ok = [i for i, fp in enumerate(fps) if fp.ok]
    ok_fps = [fps[i] for i in ok]
    cluster_of, _ = duplicate_clusters(ok_fps, near_threshold)
    gids = _group_ids(ok_fps, cluster_of)
    members: dict[str, list[int]] = {}
    for i, g in zip(ok, gids, strict=True):
        members.setdefault(g, []).append(i)
    rng = np.random.default_rng(seed)
    placed = _place_fixed_groups(disc, members, base)
    r = _assignment_ratios(disc, ratios)
    by_class: dict[str, list[tuple[str, list[int]]]] = {}
    for g, idx in placed.to_split.items():
        by_class.setdefault(_group_label(idx, disc.samples, sources), []).append((g, idx))
    for label in sorted(by_class):
        placed.split_of.update(_assign(by_class[label], r, rng))
    return _manifest_rows(disc, fps, dict(zip(ok, gids, strict=True)), placed, sources)


def _group_label(idx: list[int], samples: Sequence[Sample], sources: Sequence[str] | None) -> str:
    """A group's stratum: its majority label (``source/label`` with several sources; ties: the smallest name)."""
    key = (lambda i: f"{sources[i]}/{samples[i].label}") if sources else (lambda i: samples[i].label)
    c = Counter(key(i) for i in idx)
    return sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def _place_fixed_groups(
    disc: Discovery, members: dict[str, list[int]], base: dict[Path, ManifestRow] | None
) -> _Placement:
    """Place the groups whose split is given: by the base manifest, the official test set, or the official val set.

    Every other group goes to :attr:`_Placement.to_split`, in sorted group order.
    """
    samples = disc.samples
    official = disc.layout == "official_split"
    p = _Placement()
    for g, idx in sorted(members.items()):
        old = {i: base[samples[i].path.resolve()] for i in idx if samples[i].path.resolve() in base} if base else {}
        if old:
            p.kept.update(old)
            splits = {r.split for r in old.values() if r.split != EXCLUDED}
            for i in (i for i in idx if i not in old):
                if len(splits) == 1:
                    p.joined[i] = next(r.group for r in old.values() if r.split != EXCLUDED)
                    p.split_of[g] = next(iter(splits))
                else:
                    p.note_of[i] = f"duplicate of base-manifest images in splits {sorted(splits)}"
            continue
        if official:
            given = {samples[i].split for i in idx}
            if "test" in given:
                p.split_of[g] = "test"
                for i in idx:
                    if samples[i].split != "test":
                        p.note_of[i] = "duplicate of an official test image"
                continue
            if given == {"val"}:
                p.split_of[g] = "val"
                continue
            for i in idx:  # a group over official train and val goes to train: say so on its val images
                if samples[i].split == "val":
                    p.moved_note[i] = "official val image moved to train: duplicate of a training image"
        p.to_split[g] = idx
    return p


def _assignment_ratios(disc: Discovery, ratios: Sequence[float]) -> tuple[float, ...]:
    """The split ratios of the groups left to assign: train/val of the official training part, else ``ratios``."""
    if disc.layout != "official_split":
        return tuple(ratios)
    if any(s.split == "val" for s in disc.samples):
        return (1.0, 0.0)
    return (ratios[0] / max(ratios[0] + ratios[1], 1e-12), ratios[1] / max(ratios[0] + ratios[1], 1e-12))


def _manifest_rows(
    disc: Discovery,
    fps: list[Fingerprint],
    gid_of: dict[int, str],
    p: _Placement,
    sources: Sequence[str] | None,
) -> list[ManifestRow]:
    """One row per discovered file, sorted by path: unreadable files excluded with their error, the rest placed."""
    rows = []
    for i, (s, fp) in enumerate(zip(disc.samples, fps, strict=True)):
        common = dict(path=s.path.resolve(), label=s.label, content_hash=fp.content_hash, width=fp.width,
                      height=fp.height, mode=fp.mode, format=fp.format or "",
                      source=sources[i] if sources else "")  # fmt: skip
        if not fp.ok:
            rows.append(ManifestRow(**common, split=EXCLUDED, group="", note=fp.error or ""))
            continue
        if i in p.kept:
            kept = p.kept[i]
            rows.append(ManifestRow(**{**common, "source": common["source"] or kept.source}, split=kept.split,
                                    group=kept.group, note=kept.note))  # fmt: skip
            continue
        g = p.joined.get(i, gid_of[i])
        split = EXCLUDED if i in p.note_of else p.split_of[gid_of[i]]
        rows.append(ManifestRow(**common, split=split, group=g, note=p.note_of.get(i, p.moved_note.get(i, ""))))
    rows.sort(key=lambda r: str(r.path))
    return rows


def split_data(
    data: Path,
    *,
    seed: int = 0,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    class_map: dict[str, str] | None = None,
    classes: list[str] | None = None,
    binary: bool = False,
    near_threshold: int | None = NEAR_THRESHOLD,
    cache_dir: Path | None = None,
    workers: int | None = None,
    extra: dict[str, Path] | None = None,
    source_name: str | None = None,
    base: Path | None = None,
) -> tuple[Discovery, list[ManifestRow]]:
    """Discover ``data`` (and the ``extra`` sources), fingerprint every file, group duplicates and assign splits,
    writing nothing.

    Arguments as in :func:`make_split`.

    Returns:
        The discovery (with every skipped file and class warnings) and the manifest rows.

    Raises:
        ValueError: no usable image (an empty folder, or every image unreadable), a ``base`` that does not list
            every image of ``data``, or a bad argument.
    """
    disc = discover(data, class_map=class_map, classes=classes, binary=binary)
    primary = [s.path for s in disc.samples]
    sources = None
    if extra:
        disc, sources = _with_sources(disc, extra, source_name or Path(data).resolve().name)
    kept = None
    if base is not None:
        kept = {r.path.resolve(): r for r in read_manifest(base).rows}
        missing = [p for p in primary if p.resolve() not in kept]
        if missing:
            raise ValueError(
                f"--base {shown(base)!r} does not list {len(missing)} image(s) of {shown(data)!r} (e.g. "
                f"{shown(missing[0])!r}); pass the manifest that was made of this folder"
            )
    fps = fingerprint_files([s.path for s in disc.samples], cache_dir=cache_dir, workers=workers)
    rows = build_rows(disc, fps, seed=seed, ratios=ratios, near_threshold=near_threshold, sources=sources, base=kept)
    if not any(r.split != EXCLUDED for r in rows):
        unreadable = [r for r in rows if r.note]
        detail = f"; {len(unreadable)} could not be read, e.g. {shown(unreadable[0].path)}: {unreadable[0].note}"
        raise ValueError(
            f"no usable images under {shown(data)!r} ({len(disc.samples)} image file(s) found"
            f"{detail if unreadable else ''}); expected <root>/<class>/*.jpg or <root>/Training/<class>/*.jpg"
        )
    return disc, rows


def make_split(
    data: Path,
    out: Path,
    *,
    seed: int = 0,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    class_map: dict[str, str] | None = None,
    classes: list[str] | None = None,
    binary: bool = False,
    near_threshold: int | None = NEAR_THRESHOLD,
    cache_dir: Path | None = None,
    workers: int | None = None,
    extra: dict[str, Path] | None = None,
    source_name: str | None = None,
    base: Path | None = None,
) -> Path:
    """Discover ``data``, fingerprint every file, group duplicates and write a split manifest.

    Args:
        data: data folder in any layout of :func:`popevit.data.discover`.
        out: manifest CSV to write (replaced atomically, only once the split is complete). Files not used are
            listed with their reasons in :func:`skipped_file` beside it.
        seed: split seed.
        ratios: train/val/test fractions (summing to 1).
        class_map: class-folder -> class-name map for numeric folders.
        classes: keep only these classes.
        binary: tumour vs no-tumour.
        near_threshold: pHash Hamming threshold for near duplicates (``None`` = exact duplicates only).
        cache_dir: fingerprint cache root (``None``: no cache).
        workers: fingerprinting processes (default: all cores for large folders).
        extra: more sources, name -> folder of ``<class>/*`` images, split together with ``data`` (see the module
            docstring); a source whose classes are not ``data``'s keeps tumour / no-tumour labels.
        source_name: the name of ``data`` among the sources (default: its folder's name); only with ``extra``.
        base: an earlier manifest of ``data`` whose splits are kept (e.g. ``extra`` added to an existing split, so
            that runs on either manifest share their test images); it must list every image of ``data``.

    Returns:
        ``out``.
    """
    disc, rows = split_data(data, seed=seed, ratios=ratios, class_map=class_map, classes=classes, binary=binary,
                            near_threshold=near_threshold, cache_dir=cache_dir, workers=workers, extra=extra,
                            source_name=source_name, base=base)  # fmt: skip
    write_manifest(rows, out)
    listing = skipped_file(out)
    skips = split_skips(disc, rows)
    if skips:
        write_skipped(listing, skips)
    elif listing.is_file():
        listing.unlink()  # from an earlier split of other files: it would list files this split did use
    return Path(out)


def skipped_file(manifest: Path | str) -> Path:
    """Where :func:`make_split` lists the files a split did not use: ``NAME.skipped.csv`` beside ``NAME.csv``."""
    manifest = Path(manifest)
    return manifest.with_name(f"{manifest.stem}.skipped.csv")


def split_skips(disc: Discovery, rows: Sequence[ManifestRow]) -> list[Skip]:
    """Every file a split does not use: what discovery skipped, and the manifest's excluded rows with their note."""
    excluded = [Skip(r.path, r.note or "excluded") for r in rows if r.split == EXCLUDED]
    return [*disc.skipped, *excluded]


def _with_sources(disc: Discovery, extra: dict[str, Path], name: str) -> tuple[Discovery, list[str]]:
    """``disc`` with the samples of every ``extra`` source appended, and the source name of every sample."""
    if disc.layout == "official_split":
        raise ValueError(
            "data split --add combines <root>/<class>/* folders; pass the Training folder itself, not a root with "
            "Training/ and Testing/"
        )
    if name in extra:
        raise ValueError(f"source name {name!r} is given twice; name the sources differently")
    samples, sources = list(disc.samples), [name] * len(disc.samples)
    for src, folder in extra.items():
        other = discover(folder)
        if not set(other.classes) <= set(disc.classes):  # e.g. yes/no: keep tumour / no-tumour labels
            if NO_TUMOR not in disc.classes or len(disc.classes) < 2:
                raise ValueError(
                    f"source {src!r} has classes {other.classes}, not among {disc.classes}, and the main data has "
                    "no notumor class to read them as tumour / no tumour; give both sources the same class folders"
                )
            other = discover(folder, binary=True)
        samples += other.samples
        sources += [src] * len(other.samples)
    classes = sorted({s.label for s in samples})
    return replace(disc, samples=samples, classes=classes, ignored=sorted(disc.ignored)), sources
