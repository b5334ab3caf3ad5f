"""Find labelled images in the folder layouts users have.

Supported layouts (class = folder name; files found recursively below it, sorted):

- ``<root>/<class>/*``: Kaggle ``Training/``, ``Testing/``, Br35H ``yes/`` + ``no/``;
- ``<root>/{Training,Testing}/<class>/*`` (also ``train``/``val``/``test``): the official split is kept and reported
  in ``Sample.split`` as ``train``/``val``/``test``;
- numeric class folders (``0/``, ``1/``, ...) with a ``class_map`` such as ``{"0": "pituitary"}``.

``binary=True`` maps every tumour class to ``tumor`` and keeps ``notumor`` (folders named notumor, no_tumor, no,
normal or healthy). A ``masks/`` folder at the root (phantom lesion masks) is never a class. Class order is the
sorted class names.

Nothing is dropped silently: every file that is not used is listed in ``Discovery.skipped`` with its reason and fix
(:mod:`popevit.data.checks`): files that are not images (by extension *and* content: ``.DS_Store``, ``Thumbs.db``,
label ``.txt``, ``metadata.csv``), images directly under the root (they have no class), DICOM, NIfTI and JPEG 2000
files (read by ``popevit predict``, not for training), FIFOs, sockets and devices (only regular files are opened, so
nothing blocks), broken symbolic links, and symbolic links back into a folder already listed (a loop). Symbolic
links to other folders are followed. A class folder without any image is an error, unless its class is left out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from popevit.data.checks import Skip, class_warnings
from popevit.data.filekinds import (
    BROKEN_LINK,
    HIDDEN_DIR,
    LINK_INSIDE,
    LINK_LOOP,
    RESERVED,
    ROOT_IMAGE,
    SPECIAL,
    classify_file,
    is_hidden,
)
from popevit.io import shown
from popevit.registry import did_you_mean

SPLIT_DIRS = {
    "training": "train",
    "train": "train",
    "validation": "val",
    "val": "val",
    "testing": "test",
    "test": "test",
}
RESERVED_DIRS = frozenset({"masks"})
NO_TUMOR_NAMES = frozenset({"notumor", "no_tumor", "no-tumor", "no", "normal", "healthy"})
TUMOR = "tumor"
NO_TUMOR = "notumor"


@dataclass(frozen=True)
class Sample:
    """One labelled image file. ``split`` is set only for official ``Training``/``Testing`` layouts."""

    path: Path
    label: str
    split: str | None = None
    folder: str = ""  # the class folder name as found on disk


@dataclass
class Discovery:
    """What :func:`discover` found under ``root``."""

    root: Path
    samples: list[Sample]
    classes: list[str]
    ignored: list[Path] = field(default_factory=list)  # non-image files and unlabelled files, sorted
    layout: str = "class_folders"  # or "official_split"
    skipped_dirs: list[Path] = field(default_factory=list)  # masks/, hidden folders
    skipped: list[Skip] = field(default_factory=list)  # every file or folder not used, with the reason
    warnings: list[str] = field(default_factory=list)  # doubtful classes (popevit.data.checks.class_warnings)

    def counts(self) -> dict[str, int]:
        """Images per class, in class order."""
        out = dict.fromkeys(self.classes, 0)
        for s in self.samples:
            out[s.label] += 1
        return out


def _subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir())


def _walk_files(d: Path, root: Path, unreadable: list[tuple[Path, str]], skipped: list[Skip]) -> list[Path]:
    """Regular files below the class folder ``d`` of ``root``, sorted. Symbolic links to folders are followed,
    except links back to a folder on the way (a loop) and links elsewhere into ``root`` (another class's images).

    Folders that cannot be listed are appended to ``unreadable`` with the reason; hidden folders, such links, broken
    links and special files (FIFOs, sockets, devices: opening one could block forever) to ``skipped``.
    """
    out: list[Path] = []
    seen: set[tuple[int, int]] = set()
    root_real, d_real = os.path.realpath(root), os.path.realpath(d)

    def visit(folder: Path, on_the_way: frozenset[str]) -> None:
        real = os.path.realpath(folder)
        if real in on_the_way or real == root_real:
            skipped.append(Skip(folder, LINK_LOOP))
            return
        if os.path.commonpath([real, root_real]) == root_real and os.path.commonpath([real, d_real]) != d_real:
            skipped.append(Skip(folder, LINK_INSIDE))
            return
        try:
            st = folder.stat()
            key = (st.st_dev, st.st_ino)
            if key in seen:  # reached twice through links: list its files once
                return
            seen.add(key)
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as err:
            unreadable.append((Path(err.filename or folder), err.strerror or str(err)))
            return
        for e in entries:
            p = Path(e.path)
            try:
                is_dir, is_file = e.is_dir(), e.is_file()  # both follow symbolic links
            except OSError:
                is_dir = is_file = False
            if is_dir:
                if is_hidden(e.name):
                    skipped.append(Skip(p, HIDDEN_DIR))
                else:
                    visit(p, on_the_way | {real})
            elif is_file:
                out.append(p)
            elif e.is_symlink() and not p.exists():
                skipped.append(Skip(p, BROKEN_LINK))
            else:
                skipped.append(Skip(p, SPECIAL))

    visit(d, frozenset())
    return sorted(out)


def _map_label(folder: str, class_map: dict[str, str] | None, binary: bool) -> str:
    label = class_map[folder] if class_map is not None else folder
    if binary:
        return NO_TUMOR if label.lower() in NO_TUMOR_NAMES else TUMOR
    return label


def discover(
    root: Path | str,
    *,
    class_map: dict[str, str] | None = None,
    classes: list[str] | None = None,
    binary: bool = False,
) -> Discovery:
    """List labelled images under ``root``.

    Args:
        root: the data folder (one of the layouts in the module docstring).
        class_map: class-folder name -> class name (e.g. ``{"0": "pituitary"}``); every folder must be mapped.
        classes: keep only these classes (after mapping), e.g. the three tumour classes.
        binary: map every tumour class to ``tumor`` (vs ``notumor``).

    Returns:
        A :class:`Discovery` with samples sorted by path and sorted class names, every file not used in
        ``skipped`` with its reason, and warnings about doubtful classes.

    Raises:
        ValueError: missing folder, no class folders, split folders mixed with other folders, class names that
            differ only in letter case, unreadable sub-folders, unmapped numeric folders, unknown ``classes``, a class
            folder without images (unless ``classes`` leaves its class out).
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data folder {str(root)!r} does not exist or is not a folder; pass --data DIR")
    if binary and classes is not None:
        raise ValueError("binary and classes cannot both be set; pick one task definition")
    ignored: list[Path] = []
    skipped: list[Path] = []
    skips: list[Skip] = []
    top, split_layout = _top_folders(root, ignored, skipped, skips)
    class_dirs = _class_dirs(root, top, split_layout, ignored, skipped, skips)
    folders = sorted({d.name for _, d in class_dirs})
    _check_labels(root, folders, class_dirs, class_map, binary)
    samples = _collect_samples(root, class_dirs, class_map, binary, ignored, skips)

    found = sorted({s.label for s in samples})
    _check_empty_classes(root, class_dirs, samples, class_map, binary, classes, skips)
    if classes is not None:
        unknown = [c for c in classes if c not in found]
        if unknown:
            hint = did_you_mean(unknown[0], found)
            raise ValueError(f"unknown class {unknown[0]!r}{hint} (classes found under {str(root)!r}: {found})")
        samples = [s for s in samples if s.label in set(classes)]
        found = sorted(set(classes))
    if binary and NO_TUMOR not in found:
        raise ValueError(
            f"binary mode needs a no-tumour folder (one of {sorted(NO_TUMOR_NAMES)}) under {str(root)!r}; "
            f"found folders {folders}"
        )
    samples.sort(key=lambda s: str(s.path))
    skips += [Skip(p, HIDDEN_DIR if is_hidden(p.name) else RESERVED) for p in skipped]
    disc = Discovery(
        root=root,
        samples=samples,
        classes=found,
        ignored=sorted(ignored),
        layout="official_split" if split_layout else "class_folders",
        skipped_dirs=sorted(skipped),
        skipped=sorted(skips, key=lambda s: str(s.path)),
    )
    disc.warnings = class_warnings(disc.counts(), root)
    return disc


def _top_folders(root: Path, ignored: list[Path], skipped: list[Path], skips: list[Skip]) -> tuple[list[Path], bool]:
    """The usable folders directly under ``root`` and whether they are all split folders (Training/, Testing/).

    Files at the root go to ``ignored``/``skips`` and hidden or reserved folders to ``skipped``; a mix of split and
    other folders raises ValueError.
    """
    top = []
    for p in sorted(root.iterdir()):
        if p.is_dir():
            if is_hidden(p.name) or p.name.lower() in RESERVED_DIRS:
                skipped.append(p)
            else:
                top.append(p)
        else:
            ignored.append(p)  # files at the root have no class
            skips.append(Skip(p, _root_reason(p)))
    split_layout = bool(top) and all(p.name.lower() in SPLIT_DIRS for p in top)
    named_splits = [p.name for p in top if p.name.lower() in SPLIT_DIRS]
    if named_splits and not split_layout:
        others = [p.name for p in top if p.name.lower() not in SPLIT_DIRS]
        raise ValueError(
            f"folders under {str(root)!r} mix split folders {named_splits} with other folders {others}, so neither "
            f"layout fits (<root>/<class>/* or <root>/Training/<class>/*); move {others} out of {str(root)!r} or "
            "into a split folder, or pass one split folder as the data folder"
        )
    return top, split_layout


def _class_dirs(
    root: Path, top: list[Path], split_layout: bool, ignored: list[Path], skipped: list[Path], skips: list[Skip]
) -> list[tuple[str | None, Path]]:
    """Every class folder as ``(split or None, folder)``; loose files in split folders go to ``ignored``/``skips``."""
    parts: list[tuple[str | None, Path]] = (
        [(SPLIT_DIRS[p.name.lower()], p) for p in top] if split_layout else [(None, root)]
    )
    class_dirs: list[tuple[str | None, Path]] = []
    for split, base in parts:
        dirs = top if split is None else _subdirs(base)
        if split is not None:
            loose = [p for p in sorted(base.iterdir()) if not p.is_dir()]
            ignored.extend(loose)
            skips.extend(Skip(p, _root_reason(p)) for p in loose)
        for d in dirs:
            if is_hidden(d.name) or d.name.lower() in RESERVED_DIRS:
                skipped.append(d)
            else:
                class_dirs.append((split, d))
    if not class_dirs:
        raise ValueError(
            f"no class folders under {str(root)!r}; expected <root>/<class>/*.jpg or <root>/Training/<class>/*.jpg"
        )
    return class_dirs


def _check_labels(
    root: Path,
    folders: list[str],
    class_dirs: list[tuple[str | None, Path]],
    class_map: dict[str, str] | None,
    binary: bool,
) -> None:
    """Refuse a class map that misses or invents folders, and class names that differ only in letter case."""
    if class_map is not None:
        unmapped = [f for f in folders if f not in class_map]
        if unmapped:
            raise ValueError(
                f"class folders {unmapped} are not in the class map {class_map}; "
                f"give every folder a name, e.g. --classes {','.join(f'{f}=NAME' for f in folders)}"
            )
        unused = [k for k in class_map if k not in folders]
        if unused:
            raise ValueError(f"class map keys {unused} match no folder under {str(root)!r} (folders: {folders})")
    by_case: dict[str, set[str]] = {}
    for _, d in class_dirs:
        label = _map_label(d.name, class_map, binary)
        by_case.setdefault(label.lower(), set()).add(label)
    clash = [sorted(names) for names in by_case.values() if len(names) > 1]
    if clash:
        raise ValueError(
            f"classes {clash[0]} under {str(root)!r} differ only in letter case, so they would be separate classes; "
            "rename the folders to one spelling (in every split folder)"
        )


def _collect_samples(
    root: Path,
    class_dirs: list[tuple[str | None, Path]],
    class_map: dict[str, str] | None,
    binary: bool,
    ignored: list[Path],
    skips: list[Skip],
) -> list[Sample]:
    """The labelled images of every class folder; other files go to ``ignored``/``skips``, unlistable folders raise."""
    samples: list[Sample] = []
    unreadable: list[tuple[Path, str]] = []
    for split, d in class_dirs:
        label = _map_label(d.name, class_map, binary)
        for f in _walk_files(d, root, unreadable, skips):
            reason = classify_file(f)
            if reason is None:
                samples.append(Sample(path=f, label=label, split=split, folder=d.name))
            else:
                ignored.append(f)
                skips.append(Skip(f, reason))
    if unreadable:
        listed = "; ".join(f"{str(p)!r}: {why}" for p, why in unreadable[:5])
        raise ValueError(
            f"{len(unreadable)} folder(s) under {str(root)!r} cannot be listed ({listed}), so their images would be "
            "missed; fix their permissions or move them out of the data folder"
        )
    return samples


def _root_reason(path: Path) -> str:
    """Why a file directly under the data root (or a split folder) is not used."""
    if not path.is_file():
        return BROKEN_LINK if path.is_symlink() and not path.exists() else SPECIAL
    reason = classify_file(path)
    return ROOT_IMAGE if reason is None else reason


def _check_empty_classes(
    root: Path,
    class_dirs: list[tuple[str | None, Path]],
    samples: list[Sample],
    class_map: dict[str, str] | None,
    binary: bool,
    classes: list[str] | None,
    skips: list[Skip],
) -> None:
    """A class folder without images would silently remove its class (4 classes become 3): refuse it, unless the
    class is left out with ``classes``, or (binary) its merged class has images from other folders."""
    have = {(s.split, s.label) for s in samples}
    for split, d in class_dirs:
        label = _map_label(d.name, class_map, binary)
        if (split, label) in have or (classes is not None and label not in classes):
            continue
        inside = [s for s in skips if d in s.path.parents]
        why = f" ({len(inside)} file(s) skipped: {inside[0].reason})" if inside else ""
        keep = [c for c in sorted({lab for _, lab in have}) if c != label]
        raise ValueError(
            f"class folder {shown(d)!r} holds no images{why}, so class {label!r} would silently vanish; add its "
            f"images, remove the folder, or leave the class out with --keep {','.join(keep) or 'CLASSES'} "
            "(data.classes)"
        )


def parse_class_map(text: str | None) -> dict[str, str] | None:
    """``"0=pituitary,1=meningioma"`` -> ``{"0": "pituitary", "1": "meningioma"}`` (``None`` stays ``None``)."""
    if not text:
        return None
    out: dict[str, str] = {}
    for item in text.split(","):
        if "=" not in item:
            raise ValueError(f"class map item {item!r} is not FOLDER=NAME; write e.g. --classes 0=pituitary,1=glioma")
        k, v = (s.strip() for s in item.split("=", 1))
        if not k or not v:
            raise ValueError(f"class map item {item!r} has an empty side; write e.g. 0=pituitary")
        out[k] = v
    return out
