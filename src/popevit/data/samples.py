"""Labelled file lists for evaluation and explanation, from a data folder (any layout) or a manifest."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from popevit.data.checks import class_warnings
from popevit.data.decode import DecodeError, load_image
from popevit.data.discover import NO_TUMOR, NO_TUMOR_NAMES, TUMOR, discover
from popevit.data.manifest import EXCLUDED, SPLITS, read_manifest
from popevit.registry import did_you_mean


@dataclass
class SampleSet:
    """Usable files with labels, the class list, and every skipped file with its reason."""

    paths: list[Path]
    labels: list[str]
    classes: list[str]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # doubtful classes (popevit.data.checks.class_warnings)

    def targets(self, classes: list[str] | None = None) -> list[int]:
        """Integer targets against ``classes`` (default: this set's classes); unknown labels raise."""
        classes = classes or self.classes
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({lab for lab in self.labels if lab not in index})
        if unknown:
            raise ValueError(f"labels {unknown} are not among the model's classes {classes}; use --classes/--binary")
        return [index[lab] for lab in self.labels]


def _relabel(label: str, binary: bool) -> str:
    if not binary:
        return label
    return NO_TUMOR if label.lower() in NO_TUMOR_NAMES else TUMOR


def load_samples(
    *,
    data: Path | None = None,
    manifest: Path | None = None,
    split: str | None = None,
    class_map: dict[str, str] | None = None,
    classes: list[str] | None = None,
    binary: bool = False,
    verify: bool = True,
    source: str | None = None,
) -> SampleSet:
    """Labelled images from a folder or a manifest, bad files listed with reasons.

    Args:
        data: a data folder in any layout of :func:`popevit.data.discover`.
        manifest: a manifest CSV (exclusive with ``data``).
        split: ``train``/``val``/``test``; with ``data`` only for official Training/Testing layouts.
        class_map, classes, binary: task definition, as in :func:`popevit.data.discover`.
        verify: decode every file now, so bad ones are skipped up front (reason in ``skipped``).
        source: with a manifest of several sources, keep the rows of this one; the classes are then its labels.

    Returns:
        A :class:`SampleSet`.
    """
    if (data is None) == (manifest is None):
        raise ValueError("pass exactly one of data (a folder) or manifest (a CSV from `popevit data split`)")
    skipped: list[tuple[Path, str]] = []
    if manifest is not None:
        man = read_manifest(manifest)
        rows = man.select(split)
        if source is not None:
            if source not in man.sources:
                known = man.sources or ["(none: the manifest has no source column)"]
                raise ValueError(f"source {source!r}{did_you_mean(source, man.sources)} is not in {manifest} "
                                 f"(sources: {known})")  # fmt: skip
            rows = [r for r in rows if r.source == source]
        if split is None:
            skipped.extend((r.path, r.note or "excluded in manifest") for r in man.select(EXCLUDED))
        if class_map is not None:
            raise ValueError("class_map applies to data folders (numeric class folders); a manifest has names")
        pairs = [(r.path, _relabel(r.label, binary)) for r in rows]
        present = {lab for _, lab in pairs}  # partial labels (tumor beside tumour types) are not in man.classes
        all_classes = sorted(present if source is not None else {_relabel(c, binary) for c in man.classes} | present)
        if classes is not None:
            unknown = [c for c in classes if c not in all_classes]
            if unknown:
                hint = did_you_mean(unknown[0], all_classes)
                raise ValueError(f"unknown class {unknown[0]!r}{hint} (manifest classes: {all_classes})")
            pairs = [(p, lab) for p, lab in pairs if lab in set(classes)]
            all_classes = sorted(set(classes))
    else:
        if source is not None:
            raise ValueError("source selects rows of a manifest of several sources; pass --manifest, not --data")
        disc = discover(Path(data), class_map=class_map, classes=classes, binary=binary)
        samples = disc.samples
        if split is not None:
            given = sorted({s.split for s in samples if s.split})
            if not given:
                raise ValueError(
                    f"data folder {str(data)!r} has no official splits (Training/Testing); drop --split, or make a "
                    f"manifest with `popevit data split {data} --out manifest.csv` and pass --manifest"
                )
            if split not in given:
                hint = did_you_mean(split, given)
                raise ValueError(f"split {split!r}{hint} not found in {str(data)!r} (has {given}; known {SPLITS})")
            samples = [s for s in samples if s.split == split]
        pairs = [(s.path, s.label) for s in samples]
        all_classes = disc.classes
        skipped.extend((k.path, k.reason) for k in disc.skipped)
    paths, labels = [], []
    for p, lab in pairs:
        if verify:
            try:
                load_image(p, draft=(64, 64))
            except DecodeError as err:
                skipped.append((p, err.reason))
                continue
        paths.append(p)
        labels.append(lab)
    counts = {c: labels.count(c) for c in all_classes}
    source = data if data is not None else manifest
    return SampleSet(paths=paths, labels=labels, classes=list(all_classes), skipped=skipped,
                     warnings=class_warnings(counts, source))  # fmt: skip
