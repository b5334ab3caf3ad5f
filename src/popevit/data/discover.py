"""Find labelled images in the folder layouts users have.

Supported layouts (class = folder name; files found recursively below it, sorted):

- ``<root>/<class>/*``: Kaggle ``Training/``, ``Testing/``, Br35H ``yes/`` + ``no/``;
- ``<root>/{Training,Testing}/<class>/*`` (also ``train``/``val``/``test``): the official split is kept and reported
  in ``Sample.split`` as ``train``/``val``/``test``;
- numeric class folders (``0/``, ``1/``, ...) with a ``class_map`` such as ``{"0": "pituitary"}``.

``binary=True`` maps every tumour class to ``tumor`` and keeps ``notumor`` (folders named notumor, no_tumor, no,
normal or healthy). A ``masks/`` folder at the root (phantom lesion masks) is never a class. Files that are not
images (by extension *and* content: ``.DS_Store``, ``Thumbs.db``, label ``.txt``, ``metadata.csv``) are ignored and
listed; so are files directly under the root, which have no class. Class order is the sorted class names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from popevit.data.decode import IMAGE_EXTENSIONS, sniff_format
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

    def counts(self) -> dict[str, int]:
        """Images per class, in class order."""
        out = dict.fromkeys(self.classes, 0)
        for s in self.samples:
            out[s.label] += 1
        return out


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__MACOSX")


def is_image_file(path: Path) -> bool:
    """Image candidate: an image extension or image magic bytes (hidden files such as ``._x.jpg`` never are)."""
    if _hidden(path.name):
        return False
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        return True
    try:
        with open(path, "rb") as f:
            return sniff_format(f.read(16)) is not None
    except OSError:
        return False


def _subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir())


def _walk_files(d: Path, unreadable: list[tuple[Path, str]]) -> list[Path]:
    """Files below ``d``, sorted; folders that cannot be listed are appended to ``unreadable`` with the reason."""
    out = []

    def failed(err: OSError) -> None:
        unreadable.append((Path(err.filename or d), err.strerror or str(err)))

    for dirpath, dirnames, filenames in os.walk(d, onerror=failed):
        dirnames[:] = sorted(n for n in dirnames if not _hidden(n))
        out.extend(Path(dirpath) / n for n in filenames)
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
        A :class:`Discovery` with samples sorted by path and sorted class names.

    Raises:
        ValueError: missing folder, no class folders, split folders mixed with other folders, class names that
            differ only in letter case, unreadable sub-folders, unmapped numeric folders, unknown ``classes``.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"data folder {str(root)!r} does not exist or is not a folder; pass --data DIR")
    if binary and classes is not None:
        raise ValueError("binary and classes cannot both be set; pick one task definition")
    ignored: list[Path] = []
    skipped: list[Path] = []
    top = []
    for p in sorted(root.iterdir()):
        if p.is_dir():
            if _hidden(p.name) or p.name.lower() in RESERVED_DIRS:
                skipped.append(p)
            else:
                top.append(p)
        else:
            ignored.append(p)  # files at the root have no class
    split_layout = bool(top) and all(p.name.lower() in SPLIT_DIRS for p in top)
    named_splits = [p.name for p in top if p.name.lower() in SPLIT_DIRS]
    if named_splits and not split_layout:
        others = [p.name for p in top if p.name.lower() not in SPLIT_DIRS]
        raise ValueError(
            f"folders under {str(root)!r} mix split folders {named_splits} with other folders {others}, so neither "
            f"layout fits (<root>/<class>/* or <root>/Training/<class>/*); move {others} out of {str(root)!r} or "
            "into a split folder, or pass one split folder as the data folder"
        )
    parts: list[tuple[str | None, Path]] = (
        [(SPLIT_DIRS[p.name.lower()], p) for p in top] if split_layout else [(None, root)]
    )

    class_dirs: list[tuple[str | None, Path]] = []
    for split, base in parts:
        dirs = top if split is None else _subdirs(base)
        if split is not None:
            ignored.extend(p for p in sorted(base.iterdir()) if p.is_file())
        for d in dirs:
            if _hidden(d.name) or d.name.lower() in RESERVED_DIRS:
                skipped.append(d)
            else:
                class_dirs.append((split, d))
    if not class_dirs:
        raise ValueError(
            f"no class folders under {str(root)!r}; expected <root>/<class>/*.jpg or <root>/Training/<class>/*.jpg"
        )

    folders = sorted({d.name for _, d in class_dirs})
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

    samples: list[Sample] = []
    unreadable: list[tuple[Path, str]] = []
    for split, d in class_dirs:
        label = _map_label(d.name, class_map, binary)
        for f in _walk_files(d, unreadable):
            if is_image_file(f):
                samples.append(Sample(path=f, label=label, split=split, folder=d.name))
            else:
                ignored.append(f)
    if unreadable:
        listed = "; ".join(f"{str(p)!r}: {why}" for p, why in unreadable[:5])
        raise ValueError(
            f"{len(unreadable)} folder(s) under {str(root)!r} cannot be listed ({listed}), so their images would be "
            "missed; fix their permissions or move them out of the data folder"
        )

    found = sorted({s.label for s in samples})
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
    return Discovery(
        root=root,
        samples=samples,
        classes=found,
        ignored=sorted(ignored),
        layout="official_split" if split_layout else "class_folders",
        skipped_dirs=sorted(skipped),
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
