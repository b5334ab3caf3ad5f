"""Runs grouped into seeds by name: ``pope-s0``, ``pope-s1`` are two seeds of the group ``pope``.

Runs are grouped by folder name with a trailing seed suffix removed (``-s0``, ``_seed1``, ``pos_enc-pope_seed-2``;
the separator is required), so the shell glob ``popevit compare runs/pope-s* runs/rope-s*`` yields the groups
``pope`` and ``rope``. Per-model tests pair the runs of two groups by their shared seed suffixes.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from popevit.artifact import META, load_meta

log = logging.getLogger(__name__)

SEED_SUFFIX = re.compile(r"^(?P<base>.+?)[-_.](?:s|seed)[-_]?(?P<seed>\d+)$")


def split_seed(name: str) -> tuple[str, int | None]:
    """``"pope-s3"`` -> ``("pope", 3)``, also ``pope_seed1`` and ``pos_enc-pope_seed-2`` (sweep trials); a name
    without a seed suffix -> ``(name, None)``."""
    m = SEED_SUFFIX.match(name)
    return (m["base"], int(m["seed"])) if m else (name, None)


def run_name(run: str | Path) -> str:
    """The run's folder name as the user gave it: ``.`` and ``..`` are made absolute, but a symlink keeps its own name
    (a run linked into a study folder under another name is grouped by the link)."""
    return Path(os.path.abspath(run)).name


def group_runs(runs: Sequence[str | Path]) -> list[list[Path]]:
    """Group run folders by name with the seed suffix removed, keeping first-seen order.

    Args:
        runs: run directories, e.g. the expansion of ``runs/pope-s* runs/rope-s*``.

    Returns:
        One list per group.
    """
    groups: dict[str, list[Path]] = {}
    for r in runs:
        groups.setdefault(split_seed(run_name(r))[0], []).append(Path(r))
    return list(groups.values())


def group_name(runs: Sequence[Path]) -> str:
    bases = {split_seed(run_name(r))[0] for r in runs}
    return bases.pop() if len(bases) == 1 else "+".join(run_name(r) for r in runs)


def group_names(groups: Sequence[Sequence[Path]]) -> list[str]:
    """One name per group (:func:`group_name`), made unique: groups that would share a name are named by their runs
    (``compare --no-group pope-s0 pope-s1`` gives ``pope-s0`` and ``pope-s1``, not ``pope`` twice)."""
    names = [group_name(g) for g in groups]
    return ["+".join(run_name(r) for r in g) if names.count(n) > 1 else n for n, g in zip(names, groups, strict=True)]


def warn_mixed_models(groups: Sequence[Sequence[Path]]) -> None:
    """Log a warning for every group whose runs are different models (name or keyword arguments in ``model.json``).

    Runs are grouped as seeds by folder name alone, so ``vit-s8`` and ``vit-s16`` (patch sizes, not seeds) would be
    pooled as seeds 8 and 16 of ``vit``."""
    for g in groups:
        models = {run_name(r): load_meta(r) for r in g if (Path(r) / META).is_file()}
        kinds = {(m.name, json.dumps(m.kwargs, sort_keys=True)) for m in models.values()}
        if len(kinds) > 1:
            log.warning(
                "group %r pools different models as seeds: %s; name the runs <model>-s<seed> so that one group is "
                "one model, or pass --no-group",
                group_name(g),
                {n: f"{m.name} {m.kwargs}" for n, m in models.items()},
            )


def match_pairs(a: Sequence[Path], b: Sequence[Path]) -> list[tuple[int, int]]:
    """Run index pairs for per-model tests: by shared seed suffix (``pope-s0`` with ``rope-s0``), else by position."""
    seeds_a = [split_seed(run_name(r))[1] for r in a]
    seeds_b = [split_seed(run_name(r))[1] for r in b]
    common = [s for s in seeds_a if s is not None and s in seeds_b]
    if common:
        return [(seeds_a.index(s), seeds_b.index(s)) for s in common]
    return [(i, i) for i in range(min(len(a), len(b)))]
