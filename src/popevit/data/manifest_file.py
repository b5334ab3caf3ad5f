"""The split manifest on disk: its rows, reading, writing, and the invariant that no duplicate group spans splits.

A manifest is a UTF-8 CSV with the columns :data:`COLUMNS` (plus ``source`` for several sources), one row per image
file: its split (``train``/``val``/``test``, or ``excluded`` with the reason in ``note``), its duplicate group and
content hash. :mod:`popevit.data.manifest` makes the splits; this module owns the format, so readers of a manifest
(training, evaluation, audits) need nothing of the splitting.
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

from popevit.data.discover import NO_TUMOR, TUMOR
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
