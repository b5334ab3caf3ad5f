"""The speed targets: read from the ``## Targets`` table of BENCHMARKS.md and checked against a bench result.

The table lives in the document, not in code, so a target is changed in one place. Its columns (others are ignored)::

    | target | figure | goal | when |
    | pope / none step time (seed) | `train.seed.models.pope.ratio_none` | <= 1.10 | |
    | CPU epoch ... (s) | `epoch.epoch_s` | <= 60 | `config.device` = cpu, `epoch.model` = vit_p16_w192_d6 |

``figure`` is the dotted path of the value in the result of :func:`popevit.bench.suite.run_bench` (several paths
joined by ``or``: the first one present); ``goal`` is ``<=`` or ``>=`` and a number (``60%`` is 0.6); ``when`` holds
conditions on other values of the result, all of which must hold for the figure to count. A preset's former name
counts as its current one (:data:`popevit.models.presets.FORMER_NAMES`).
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from popevit.models.presets import FORMER_NAMES

HEADING = "## Targets"
_CODE = re.compile(r"`([^`]+)`")
_GOAL = re.compile(r"^(<=|>=)\s*([0-9.,]+)\s*(%?)$")
_OPS = {"<=": operator.le, ">=": operator.ge}


@dataclass(frozen=True)
class Target:
    """One row of the target table.

    Attributes:
        name: what is targeted, e.g. ``pope / none step time (seed)``.
        figures: dotted paths into a bench result; the first one present holds the value.
        goal: the goal as written, e.g. ``<= 1.10`` or ``>= 60%``.
        op: ``<=`` or ``>=``.
        limit: the number the value is compared with (a percentage as a fraction).
        when: ``(path, value)`` conditions on the result for the figure to count.
    """

    name: str
    figures: tuple[str, ...]
    goal: str
    op: str
    limit: float
    when: tuple[tuple[str, str], ...] = ()

    def value(self, res: dict[str, Any]) -> float | None:
        """The figure in ``res``; None when it was not measured or a ``when`` condition does not hold."""
        if any(_canonical(_lookup(res, path)) != want for path, want in self.when):
            return None
        for path in self.figures:
            found = _lookup(res, path, missing=_MISSING)
            if found is not _MISSING:
                return found
        return None

    def where(self) -> tuple[str, str | None, str | None]:
        """``(section, model, size)`` of the first figure: ``train.seed`` / ``pope`` / ``seed`` for a step time."""
        parts = self.figures[0].split(".")
        if parts[0] == "train" and len(parts) > 3 and parts[2] == "models":
            return f"train.{parts[1]}", parts[3], parts[1]
        return parts[0], None, None


_MISSING = object()


def _lookup(res: dict[str, Any], path: str, missing: Any = None) -> Any:
    node: Any = res
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return missing
        node = node[key]
    return node


def _canonical(value: Any) -> Any:
    return FORMER_NAMES.get(value, value) if isinstance(value, str) else value


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _row(path: Path, lineno: int, row: dict[str, str]) -> Target:
    """One table row as a :class:`Target`; a malformed cell raises naming the file, line and fix."""
    where = f"{path}:{lineno}"
    figures = tuple(_CODE.findall(row["figure"]))
    goal = _GOAL.match(row["goal"])
    if not figures or goal is None:
        raise ValueError(
            f"{where}: target {row['target']!r} needs a figure path in backticks and a goal like '<= 1.10' or "
            f"'>= 60%', got figure {row['figure']!r} and goal {row['goal']!r}"
        )
    limit = float(goal[2].replace(",", "")) / (100.0 if goal[3] else 1.0)
    when = []
    for cond in filter(None, (c.strip() for c in row.get("when", "").split(","))):
        m = re.fullmatch(r"`([^`]+)`\s*=\s*(\S+)", cond)
        if m is None:
            raise ValueError(f"{where}: condition {cond!r} of {row['target']!r} is not of the form `path` = value")
        when.append((m[1], m[2]))
    return Target(row["target"], figures, row["goal"], goal[1], limit, tuple(when))


def read_targets(path: str | Path) -> list[Target]:
    """The targets of the first table under ``## Targets`` in a Markdown file (BENCHMARKS.md).

    Raises:
        ValueError: no such table, a missing column, or a row that does not parse (naming the line).
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip() == HEADING), None)
    table = start is not None and next((i for i in range(start + 1, len(lines)) if lines[i].startswith("|")), None)
    if not table:
        raise ValueError(f"{path} has no table under {HEADING!r}; add one with columns target, figure, goal, when")
    header = _cells(lines[table])
    missing = {"target", "figure", "goal"} - set(header)
    if missing:
        raise ValueError(f"{path}:{table + 1}: the target table lacks the columns {sorted(missing)}")
    targets = []
    for i in range(table + 2, len(lines)):  # after the header and its |---| line
        if not lines[i].startswith("|"):
            break
        targets.append(_row(path, i + 1, dict(zip(header, _cells(lines[i]), strict=False))))
    return targets


def check_targets(res: dict[str, Any], targets: list[Target]) -> list[dict[str, Any]]:
    """The targets against the figures in ``res``: ``met`` is true/false, or ``None`` when not measured.

    Each entry: ``{"name", "target", "value", "met", "where", "model", "size"}`` (``model``/``size``: what a missed
    step-time target points at, for profiling).
    """
    out = []
    for t in targets:
        value = t.value(res)
        where, model, size = t.where()
        met = None if value is None else bool(_OPS[t.op](value, t.limit))
        out.append(
            {"name": t.name, "target": t.goal, "value": value, "met": met, "where": where, "model": model, "size": size}
        )
    return out
