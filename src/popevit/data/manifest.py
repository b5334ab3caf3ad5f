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
"""

from __future__ import annotations

import csv
import hashlib
import io
import ntpath
import posixpath
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from popevit.data.checks import Skip, write_skipped
from popevit.data.dedup import NEAR_THRESHOLD, Fingerprint, duplicate_clusters, fingerprint_files
from popevit.data.discover import Discovery, discover
from popevit.io import atomic_write_csv, shown
from popevit.registry import did_you_mean

SPLITS = ("train", "val", "test")
EXCLUDED = "excluded"
COLUMNS = ("path", "label", "split", "group", "content_hash", "width", "height", "mode", "format", "note")
SOURCE = "source"  # written after COLUMNS only when rows come from several sources (single-source bytes unchanged)


def partial_labels(labels: set[str] | list[str]) -> dict[str, list[str]]:
    """Labels that stand for a set of classes: ``tumor`` beside ``notumor`` and at least one tumour type.

    A binary manifest (``notumor``, ``tumor``) has no partial label: there ``tumor`` is a class of its own.
    """
    from popevit.data.discover import NO_TUMOR, TUMOR

    types = sorted(c for c in set(labels) if c not in (NO_TUMOR, TUMOR))
    return {TUMOR: types} if TUMOR in labels and NO_TUMOR in labels and types else {}


_WINDOWS_PATH = re.compile(r"^([A-Za-z]:[\\/]|\\\\)")  # C:\ or C:/, or \\server


def below_common_folder(paths: Sequence[str]) -> list[str] | None:
    """Each path below the deepest folder that holds them all, ``/``-separated (``glioma/Tr-gl_0013.jpg``).

    Paths written on Windows (a drive letter, or a UNC share) are read as Windows paths on any system. None when the
    paths share no folder: absolute and relative ones mixed, or two drives.
    """
    if not paths:
        return []
    windows = all(_WINDOWS_PATH.match(p) for p in paths)
    mod = ntpath if windows else posixpath
    paths = [mod.normpath(p) for p in paths]
    try:
        root = mod.commonpath([mod.dirname(p) for p in paths])
    except ValueError:
        return None
    prefix = root if root.endswith(mod.sep) or not root else root + mod.sep
    out = [p[len(prefix) :] if p.startswith(prefix) else mod.relpath(p, root) for p in paths]  # relpath: slow
    return [k.replace("\\", "/") for k in out] if windows else out


@dataclass(frozen=True)
class ManifestRow:
    path: Path
    label: str
    split: str
    group: str
    content_hash: str
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    note: str = ""
    source: str = ""


@dataclass
class Manifest:
    """A parsed manifest. ``classes`` are the sorted labels (partial labels excepted, see :func:`partial_labels`);
    ``sha256`` identifies the file for provenance."""

    path: Path
    rows: list[ManifestRow]
    classes: list[str]
    sha256: str

    @property
    def label_sets(self) -> dict[str, list[str]]:
        """Partial label -> the classes it allows (e.g. ``tumor`` -> the tumour types); empty for most manifests."""
        return partial_labels({r.label for r in self.rows if r.split != EXCLUDED})

    @property
    def sources(self) -> list[str]:
        """The sources named in the ``source`` column, sorted; empty for a single-source manifest."""
        return sorted({r.source for r in self.rows if r.source})

    def select(self, split: str | None) -> list[ManifestRow]:
        """Rows of one split (``train``/``val``/``test``/``excluded``); ``None`` = every usable row."""
        if split is None:
            return [r for r in self.rows if r.split != EXCLUDED]
        known = sorted({*SPLITS, EXCLUDED, *(r.split for r in self.rows)})
        if split not in known:
            raise ValueError(f"unknown split {split!r}{did_you_mean(split, known)} (manifest splits: {known})")
        return [r for r in self.rows if r.split == split]

    def fingerprint(self) -> str | None:
        """What the manifest says of its images, blind to where they are stored; None without content hashes.

        The sha256 of the sorted rows' path below the folder that holds every image (:func:`below_common_folder`),
        label, split, group and content hash. The same split made of a copy of the data in another folder (another
        machine) has another file hash but this fingerprint. Excluded rows count with whatever hash they have (an
        unreadable file has none); a manifest whose usable rows lack content hashes (written by hand) has no
        fingerprint: its images are known only by their paths.
        """
        if not self.rows or any(not r.content_hash for r in self.rows if r.split != EXCLUDED):
            return None
        keys = below_common_folder([str(r.path) for r in self.rows])
        if keys is None:
            return None
        lines = sorted(
            "\t".join((k, r.label, r.split, r.group, r.content_hash)) for k, r in zip(keys, self.rows, strict=True)
        )
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    def counts(self) -> dict[str, dict[str, int]]:
        """split -> class (partial labels included) -> count."""
        labels = [*self.classes, *self.label_sets]
        out: dict[str, dict[str, int]] = {s: dict.fromkeys(labels, 0) for s in SPLITS}
        for r in self.rows:
            out.setdefault(r.split, dict.fromkeys(labels, 0))
            out[r.split][r.label] = out[r.split].get(r.label, 0) + 1
        return out


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
    samples = disc.samples
    members: dict[str, list[int]] = {}
    for i, g in zip(ok, gids, strict=True):
        members.setdefault(g, []).append(i)
    split_of: dict[str, str] = {}
    note_of: dict[int, str] = {}  # these rows are excluded
    moved_note: dict[int, str] = {}  # these rows keep their group's split
    rng = np.random.default_rng(seed)
    official = disc.layout == "official_split"

    def group_label(idx: list[int]) -> str:
        key = (lambda i: f"{sources[i]}/{samples[i].label}") if sources else (lambda i: samples[i].label)
        c = Counter(key(i) for i in idx)
        return sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]

    kept: dict[int, ManifestRow] = {}  # rows of the base manifest, split and group unchanged
    joined: dict[int, str] = {}  # new rows that duplicate base rows: the base group they join
    to_split = {}
    for g, idx in sorted(members.items()):
        old = {i: base[samples[i].path.resolve()] for i in idx if samples[i].path.resolve() in base} if base else {}
        if old:
            kept.update(old)
            splits = {r.split for r in old.values() if r.split != EXCLUDED}
            for i in (i for i in idx if i not in old):
                if len(splits) == 1:
                    joined[i] = next(r.group for r in old.values() if r.split != EXCLUDED)
                    split_of[g] = next(iter(splits))
                else:
                    note_of[i] = f"duplicate of base-manifest images in splits {sorted(splits)}"
            continue
        if official:
            given = {samples[i].split for i in idx}
            if "test" in given:
                split_of[g] = "test"
                for i in idx:
                    if samples[i].split != "test":
                        note_of[i] = "duplicate of an official test image"
                continue
            if given == {"val"}:
                split_of[g] = "val"
                continue
            for i in idx:  # a group over official train and val goes to train: say so on its val images
                if samples[i].split == "val":
                    moved_note[i] = "official val image moved to train: duplicate of a training image"
        to_split[g] = idx
    if official:
        has_val = any(s.split == "val" for s in samples)
        r = (
            (1.0, 0.0)
            if has_val
            else (ratios[0] / max(ratios[0] + ratios[1], 1e-12), ratios[1] / max(ratios[0] + ratios[1], 1e-12))
        )
    else:
        r = tuple(ratios)
    by_class: dict[str, list[tuple[str, list[int]]]] = {}
    for g, idx in to_split.items():
        by_class.setdefault(group_label(idx), []).append((g, idx))
    for label in sorted(by_class):
        split_of.update(_assign(by_class[label], r, rng))

    rows = []
    gid_of = dict(zip(ok, gids, strict=True))
    for i, (s, fp) in enumerate(zip(samples, fps, strict=True)):
        common = dict(path=s.path.resolve(), label=s.label, content_hash=fp.content_hash, width=fp.width,
                      height=fp.height, mode=fp.mode, format=fp.format or "",
                      source=sources[i] if sources else "")  # fmt: skip
        if not fp.ok:
            rows.append(ManifestRow(**common, split=EXCLUDED, group="", note=fp.error or ""))
            continue
        if i in kept:
            rows.append(ManifestRow(**{**common, "source": common["source"] or kept[i].source}, split=kept[i].split,
                                    group=kept[i].group, note=kept[i].note))  # fmt: skip
            continue
        g = joined.get(i, gid_of[i])
        split = EXCLUDED if i in note_of else split_of[gid_of[i]]
        rows.append(ManifestRow(**common, split=split, group=g, note=note_of.get(i, moved_note.get(i, ""))))
    rows.sort(key=lambda r: str(r.path))
    return rows


def check_rows(rows: Sequence[ManifestRow], where: Path | str) -> None:
    """Raise ``ValueError`` when a path is listed twice or a duplicate group lies in more than one split.

    Either breaks the leakage invariant: the same image, or copies of it, would sit in train and test. Rows marked
    ``excluded`` do not count towards a group's splits (that is how official-test leaks are kept out of training).
    """
    twice = sorted(str(p) for p, n in Counter(r.path for r in rows).items() if n > 1)
    if twice:
        raise ValueError(
            f"manifest {str(where)!r} lists {len(twice)} path(s) more than once (e.g. {twice[:3]}); each image must "
            "appear once: delete the extra rows or re-run `popevit data split`"
        )
    splits: dict[str, set[str]] = {}
    for r in rows:
        if r.group and r.split != EXCLUDED:
            splits.setdefault(r.group, set()).add(r.split)
    spanning = {g: sorted(s, key=SPLITS.index) for g, s in sorted(splits.items()) if len(s) > 1}
    if spanning:
        examples = "; ".join(f"group {g!r} in {s}" for g, s in list(spanning.items())[:3])
        raise ValueError(
            f"manifest {str(where)!r} has {len(spanning)} duplicate group(s) in more than one split ({examples}): "
            "copies of one image would leak across splits; put each group in one split (or mark extra rows "
            "'excluded'), or re-run `popevit data split`"
        )


def write_manifest(rows: Sequence[ManifestRow], out: Path) -> Path:
    """Write rows as UTF-8 CSV (``\\n`` line endings, fixed column order): byte-identical for identical rows.

    The file is replaced atomically. A file name that is not valid UTF-8 is written as its original bytes, and
    :func:`read_manifest` reads it back to the same path.

    Raises:
        ValueError: the rows break the leakage invariant (see :func:`check_rows`); nothing is written.
    """
    out = Path(out)
    check_rows(rows, out)
    several = any(r.source for r in rows)
    table = [[str(r.path), r.label, r.split, r.group, r.content_hash, r.width, r.height, r.mode, r.format, r.note,
              *([r.source] if several else [])] for r in rows]  # fmt: skip
    # atomic: an existing manifest stays whole until the new one is complete (a full disk, a kill, an odd name)
    return atomic_write_csv(out, [(*COLUMNS, SOURCE) if several else COLUMNS, *table], lineterminator="\n")


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
    from dataclasses import replace

    from popevit.data.discover import NO_TUMOR

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


def same_images(a: Path | str, b: Path | str) -> bool:
    """Whether two manifest files list the same images in the same splits: the same bytes, or the same
    :meth:`Manifest.fingerprint` (the same split of a copy of the data stored elsewhere)."""
    if Path(a).read_bytes() == Path(b).read_bytes():
        return True
    try:
        fingerprint = read_manifest(a).fingerprint()
        return fingerprint is not None and fingerprint == read_manifest(b).fingerprint()
    except ValueError:  # not a valid manifest (any more): nothing to vouch for its images
        return False


def _row_text(rec: dict[str, str | None]) -> str:
    return shown(",".join(v or "" for v in rec.values() if isinstance(v, str)))[:120]


def read_manifest(path: Path | str) -> Manifest:
    """Parse a manifest CSV written by :func:`make_split` (or by hand: only ``path,label,split`` are required).

    Raises:
        ValueError: missing file or required columns, unknown split names, a path listed twice, or a duplicate group
            in more than one split.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"manifest {shown(path)!r} is a folder; pass the CSV file (or use --data for an image folder)")
    if not path.is_file():
        raise ValueError(f"manifest {shown(path)!r} not found; create one with `popevit data split DATA --out {path}`")
    raw = path.read_bytes()
    # -sig: a BOM (Excel's "CSV UTF-8") is dropped; surrogateescape: file names that are not UTF-8 (write_manifest)
    reader = csv.DictReader(io.StringIO(raw.decode("utf-8-sig", "surrogateescape")))
    missing = {"path", "label", "split"} - set(reader.fieldnames or [])
    if missing:
        raise ValueError(f"manifest {str(path)!r} lacks columns {sorted(missing)} (has {reader.fieldnames})")
    rows = []
    base = path.resolve().parent
    for n, rec in enumerate(reader, start=2):
        where = f"{shown(path)}:{n}"
        if not rec.get("path") or not rec.get("label") or rec.get("split") is None:
            raise ValueError(
                f"{where}: the row lacks a path, label or split ({_row_text(rec)}); fill it in or delete it"
            )
        p = Path(rec["path"])
        split = rec["split"]
        if split not in (*SPLITS, EXCLUDED):
            raise ValueError(f"{where}: split {split!r} is not one of {[*SPLITS, EXCLUDED]}")
        try:
            width, height = int(rec.get("width") or 0), int(rec.get("height") or 0)
        except ValueError:
            raise ValueError(f"{where}: width/height must be whole numbers ({_row_text(rec)})") from None
        rows.append(
            ManifestRow(
                path=p if p.is_absolute() else base / p,
                label=rec["label"],
                split=split,
                group=rec.get("group") or "",
                content_hash=rec.get("content_hash") or "",
                width=width,
                height=height,
                mode=rec.get("mode") or "",
                format=rec.get("format") or "",
                note=rec.get("note") or "",
                source=rec.get(SOURCE) or "",
            )
        )
    check_rows(rows, path)
    partial = partial_labels({r.label for r in rows if r.split != EXCLUDED})
    classes = sorted({r.label for r in rows} - set(partial))
    return Manifest(path=path, rows=rows, classes=classes, sha256=hashlib.sha256(raw).hexdigest())
