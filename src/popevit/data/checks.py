"""What a command that reads images says about them: the files it skipped and why, and doubtful class lists.

Nothing is dropped silently. Every skipped file is a :class:`Skip` with a one-line reason that also says what to do
(equal reasons group together); :func:`format_skipped` prints them grouped by reason with the first few names, and
:func:`write_skipped` writes all of them to a CSV. :func:`class_warnings` flags classes with very few images and
class names one typo apart (``gliomaa`` next to ``glioma``), which usually mean a labelling mistake, not a class.
"""

from __future__ import annotations

import csv
import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from popevit.io import atomic_write_csv, shown

MIN_CLASS_IMAGES = 10  # fewer images than this in a class is probably a mistake (a typo'd label, a stray folder)
SHOW_PER_REASON = 5  # names printed per reason; the CSV lists all of them


@dataclass(frozen=True)
class Skip:
    """A file (or folder) a command did not use, and why; ``reason`` says what the file is and what to do."""

    path: Path
    reason: str


def reason_kind(reason: str) -> str:
    """The part of a reason before its details, to group e.g. many ``truncated or corrupt image data (...)``."""
    return re.split(r" \(|: |; ", reason, maxsplit=1)[0]


def group_skipped(skipped: Iterable[Skip]) -> dict[str, list[Path]]:
    """Paths per reason, reasons in order of first appearance, paths sorted. Reasons that differ only in their
    details (a decoder's message) share a group, headed by their common kind."""
    by_kind: dict[str, list[Skip]] = {}
    for s in skipped:
        by_kind.setdefault(reason_kind(s.reason), []).append(s)
    out = {}
    for kind, items in by_kind.items():
        reasons = {s.reason for s in items}
        head = reasons.pop() if len(reasons) == 1 else f"{kind} (each file's reason is in the listing)"
        out[head] = sorted((Path(s.path) for s in items), key=str)
    return out


def format_skipped(
    skipped: Sequence[Skip], root: str | Path | None = None, listing: str | Path | None = None, what: str = "entries"
) -> str:
    """Lines saying what was skipped, grouped by reason, the first :data:`SHOW_PER_REASON` names of each.

    Args:
        skipped: the skipped files.
        root: shown paths are relative to it where they lie below it.
        listing: the file listing all of them (named in the first line), or None.
        what: what the items are, for the first line.

    Returns:
        The text ("" when nothing was skipped).
    """
    if not skipped:
        return ""
    where = f" (all listed in {shown(listing)})" if listing is not None else ""
    lines = [f"skipped {len(skipped)} {what}{where}:"]
    for reason, paths in group_skipped(skipped).items():
        names = [_rel(p, root) for p in paths[:SHOW_PER_REASON]]
        more = f", ... ({len(paths) - SHOW_PER_REASON} more)" if len(paths) > SHOW_PER_REASON else ""
        lines.append(f"  {len(paths)} x {reason}")
        lines.append(f"      {', '.join(names)}{more}")
    return "\n".join(lines)


def _rel(path: Path, root: str | Path | None) -> str:
    if root is not None:
        try:
            return shown(Path(path).relative_to(root))
        except ValueError:
            pass
    return shown(path)


def write_skipped(path: str | Path, skipped: Sequence[Skip]) -> Path:
    """Write every skipped file as ``path,reason`` rows (atomically) and return ``path``."""
    rows = [["path", "reason"], *([str(s.path), s.reason] for s in sorted(skipped, key=lambda s: str(s.path)))]
    return atomic_write_csv(path, rows, lineterminator="\n")


def read_skipped(path: str | Path) -> list[Skip]:
    """The rows :func:`write_skipped` wrote (none when the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return [Skip(Path(r["path"]), r["reason"]) for r in csv.DictReader(f)]


def _edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions), for short names."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def _squash(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


def near_miss_classes(classes: Iterable[str]) -> list[tuple[str, str]]:
    """Pairs of class names that are probably one class spelt twice: equal once case and punctuation are dropped
    (``no_tumor``/``notumor``), or one edit apart with at least 4 letters (``gliomaa``/``glioma``)."""
    pairs = []
    for a, b in itertools.combinations(sorted(classes), 2):
        sa, sb = _squash(a), _squash(b)
        if sa == sb or (min(len(sa), len(sb)) >= 4 and _edit_distance(sa, sb) <= 1):
            pairs.append((a, b))
    return pairs


def class_warnings(counts: Mapping[str, int], source: str | Path, minimum: int = MIN_CLASS_IMAGES) -> list[str]:
    """Warnings about a class list: near-miss names, and classes with fewer than ``minimum`` images.

    Args:
        counts: images per class.
        source: the folder or manifest they come from (named in the warning).
        minimum: the smallest count that is not doubtful.
    """
    out = []
    for a, b in near_miss_classes(counts):
        small, big = sorted((a, b), key=lambda c: (counts[c], c))
        out.append(
            f"classes {a!r} ({counts[a]} images) and {b!r} ({counts[b]}) in {shown(source)} differ by one letter: "
            f"if {small!r} is a typo for {big!r}, fix its label (or folder name), else it is trained as its own class"
        )
    few = {c: n for c, n in counts.items() if 0 < n < minimum}
    if few:
        listed = ", ".join(f"{c!r} ({n})" for c, n in sorted(few.items()))
        out.append(
            f"class(es) {listed} in {shown(source)} have fewer than {minimum} images: too few to learn or to measure; "
            "check that they are real classes (not typos or stray folders), or leave them out with --keep / "
            "data.classes"
        )
    return out
