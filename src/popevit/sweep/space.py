"""Search spaces for ``popevit sweep``: ``--grid key=v1,v2``, ``--range key=low:high[:log][:int]`` and seeds.

Every searched key is a dotted config override (``optim.lr``, ``model.patch_size``), so a trial's configuration is
the base config plus one ``--set key=value`` per parameter plus ``train.seed``. Grid values must be scalars
(Optuna's ``GridSampler`` persists ``None``, bool, int, float and str only).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

GridValue = None | bool | int | float | str

SEED_KEY = "train.seed"
# Keys that change which images are in which split: with one of them searched, every trial makes its own split.
SPLIT_KEYS = frozenset(
    {"data.data", "data.manifest", "data.split_seed", "data.ratios", "data.classes", "data.binary", "data.class_map"}
)


@dataclass(frozen=True)
class Range:
    """A continuous (or integer) interval searched by TPE.

    Attributes:
        low: lower bound (inclusive).
        high: upper bound (inclusive).
        log: sample on a log scale (``low`` must be > 0).
        integer: sample integers.
    """

    low: float
    high: float
    log: bool = False
    integer: bool = False


def parse_value(raw: str) -> GridValue:
    """One grid value: YAML scalars (``true``, ``null``, ``cls``), with ``1e-4``-style numbers read as floats."""
    text = raw.strip()
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        raise ValueError(
            f"grid value {raw!r} is not a YAML scalar; grid values are comma-separated scalars (lists cannot be "
            "grid values: put a fixed list in --set instead)"
        ) from None
    if isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string
        except ValueError:
            return value
    if value is not None and not isinstance(value, bool | int | float):
        raise ValueError(
            f"grid value {raw!r} is a {type(value).__name__}; grid values must be scalars (number, bool, string, "
            "null). Put a fixed list in --set instead"
        )
    return value


def _split_key(spec: str, flag: str, example: str) -> tuple[str, str]:
    if "=" not in spec:
        raise ValueError(f"{flag} {spec!r} is not key=values; write e.g. {flag} {example!r}")
    key, raw = spec.split("=", 1)
    key = key.strip()
    if not key or not raw.strip():
        raise ValueError(f"{flag} {spec!r} needs a key and values; write e.g. {flag} {example!r}")
    if key == SEED_KEY:
        raise ValueError(f"{flag} {spec!r}: search seeds with --seeds 0,1,2, which summarises each configuration")
    return key, raw


def parse_grid(spec: str) -> tuple[str, list[GridValue]]:
    """``"optim.lr=1e-4,3e-4,1e-3"`` -> ``("optim.lr", [0.0001, 0.0003, 0.001])``."""
    key, raw = _split_key(spec, "--grid", "optim.lr=1e-4,3e-4,1e-3")
    values = [parse_value(v) for v in raw.split(",")]
    if len({json.dumps(v) for v in values}) != len(values):
        raise ValueError(f"--grid {spec!r} repeats a value; list each value once")
    return key, values


def parse_range(spec: str) -> tuple[str, Range]:
    """``"optim.lr=1e-5:1e-2:log"`` -> ``("optim.lr", Range(1e-5, 1e-2, log=True))``; ``:int`` for integers."""
    key, raw = _split_key(spec, "--range", "optim.lr=1e-5:1e-2:log")
    parts = [p.strip() for p in raw.split(":")]
    flags = set(parts[2:])
    if len(parts) < 2 or not flags <= {"log", "int"}:
        raise ValueError(f"--range {spec!r} is not low:high[:log][:int]; write e.g. --range optim.lr=1e-5:1e-2:log")
    try:
        low, high = float(parts[0]), float(parts[1])
    except ValueError:
        raise ValueError(f"--range {spec!r}: bounds must be numbers, got {parts[0]!r} and {parts[1]!r}") from None
    if not low < high:
        raise ValueError(f"--range {spec!r}: low ({low}) must be below high ({high})")
    if "log" in flags and low <= 0:
        raise ValueError(f"--range {spec!r}: a log range needs low > 0, got {low}")
    if "int" in flags and (low != int(low) or high != int(high)):
        raise ValueError(f"--range {spec!r}: an :int range needs integer bounds, got {low} and {high}")
    return key, Range(low, high, log="log" in flags, integer="int" in flags)


@dataclass
class SearchSpace:
    """What a sweep searches.

    Attributes:
        grid: key -> values (every combination is a configuration in grid mode; categorical for TPE).
        ranges: key -> :class:`Range` (TPE mode only).
        seeds: training seeds; each configuration is trained once per seed, each seed a separate trial.
    """

    grid: dict[str, list[GridValue]] = field(default_factory=dict)
    ranges: dict[str, Range] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=lambda: [0])

    @classmethod
    def from_specs(cls, grids: list[str], ranges: list[str], seeds: list[int]) -> SearchSpace:
        """Parse ``--grid``/``--range`` strings; a key may appear once across both."""
        space = cls(seeds=list(seeds))
        for key, values in map(parse_grid, grids):
            space._claim(key)
            space.grid[key] = values
        for key, rng in map(parse_range, ranges):
            space._claim(key)
            space.ranges[key] = rng
        if not space.seeds:
            raise ValueError("--seeds is empty; give at least one seed, e.g. --seeds 0")
        if len(set(space.seeds)) != len(space.seeds):
            raise ValueError(f"--seeds {space.seeds} repeats a seed")
        if not space.grid and not space.ranges:
            raise ValueError("nothing to search: give at least one --grid key=v1,v2 or --range key=low:high")
        return space

    def _claim(self, key: str) -> None:
        if key in self.grid or key in self.ranges:
            raise ValueError(f"{key!r} is searched twice; give each key one --grid or one --range")

    @property
    def mode(self) -> Literal["grid", "tpe"]:
        return "tpe" if self.ranges else "grid"

    @property
    def params(self) -> list[str]:
        """Searched config keys (without the seed), sorted."""
        return sorted([*self.grid, *self.ranges])

    def grid_points(self) -> Iterator[dict[str, GridValue]]:
        """Every combination of the grid values (seeds excluded)."""
        keys = sorted(self.grid)
        for combo in itertools.product(*(self.grid[k] for k in keys)):
            yield dict(zip(keys, combo, strict=True))

    @property
    def n_grid(self) -> int:
        return math.prod(len(v) for v in self.grid.values())

    def to_json(self) -> str:
        """Canonical text of the space (stored in the study, so a changed space is caught on re-runs)."""
        ranges = {k: [r.low, r.high, r.log, r.integer] for k, r in sorted(self.ranges.items())}
        return json.dumps({"grid": dict(sorted(self.grid.items())), "ranges": ranges, "seeds": self.seeds})

    def digest(self) -> str:
        return hashlib.sha1(self.to_json().encode()).hexdigest()[:8]


def config_id(params: dict[str, Any]) -> str:
    """Exact identity of a configuration (the searched values, seed excluded)."""
    return json.dumps({k: v for k, v in sorted(params.items()) if k != SEED_KEY})


def trial_key(params: dict[str, Any], seed: int) -> str:
    """Exact identity of a trial: configuration + seed. Two trials with one key are the same training run."""
    return json.dumps({**{k: v for k, v in sorted(params.items()) if k != SEED_KEY}, SEED_KEY: seed})


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_name(params: dict[str, Any], seed: int) -> str:
    """Folder name of a trial, readable and deterministic: ``dropout-0.1_lr-0.0003_seed-0``.

    The last part of each key names it; a short hash of the exact values is appended when the readable form is
    lossy (rounded floats, ambiguous short keys, odd characters) or too long, so distinct trials never share a folder.
    """
    items = sorted((k, v) for k, v in params.items() if k != SEED_KEY)
    shorts = [k.rsplit(".", 1)[-1] for k, _ in items]
    parts = [f"{s}-{_fmt(v)}" for s, (_, v) in zip(shorts, items, strict=True)]
    name = "_".join([*parts, f"seed-{seed}"])
    lossy = len(set(shorts)) != len(shorts) or any(isinstance(v, float) and float(_fmt(v)) != v for _, v in items)
    safe = all(c.isalnum() or c in "-_.+" for c in name)
    if lossy or not safe or len(name) > 100:
        digest = hashlib.sha1(trial_key(dict(items), seed).encode()).hexdigest()[:8]
        readable = "".join(c if c.isalnum() or c in "-_.+" else "-" for c in "_".join(parts))[:80]
        name = f"{readable}_{digest}_seed-{seed}"
    return name


def yaml_scalar(value: GridValue) -> str:
    """A scalar as YAML text that reads back to the same value (``1e-05`` -> ``1.0e-05``: PyYAML needs the dot)."""
    if value is None:
        return "null"
    if isinstance(value, bool | str):
        return json.dumps(value)
    text = repr(value)
    if isinstance(value, float) and "e" in text and "." not in text:
        text = text.replace("e", ".0e", 1)
    return text


def overrides_for(params: dict[str, Any], seed: int) -> list[str]:
    """``--set`` strings of one trial, values written so YAML reads them back exactly."""
    out = []
    for key, value in sorted(params.items()):
        if key == SEED_KEY:
            continue
        out.append(f"{key}={yaml_scalar(value)}")
    return [*out, f"{SEED_KEY}={seed}"]
