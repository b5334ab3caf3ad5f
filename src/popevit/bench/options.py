"""What one run of the benchmark suite measures: :class:`BenchConfig`, and the models and sizes it names."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from popevit.bench.models import SIZES, TIMM, BenchSize
from popevit.models import POS_ENCS, list_pos_encs

SECTIONS = ("peak", "train", "inference", "memory", "loader", "epoch", "attention", "profile")


@dataclass
class BenchConfig:
    """What ``run_bench`` measures.

    Attributes:
        device: ``"cpu"`` or ``"cuda"``.
        sizes: benchmark sizes (:data:`popevit.bench.models.SIZES`: ``tiny``, ``cpu``, ``seed``).
        pes: positional encodings (``None`` = every registered one); ``none`` is always added (the ratio base).
        timm: also time timm's ``VisionTransformer`` twin.
        repeats: timed interleaved rounds (the figure is their median; >= 5 for BENCHMARKS.md).
        warmup: discarded leading rounds.
        batch: training batch (``None`` = the size's own batch, 32).
        infer_batch: batch of the inference-throughput figure.
        latency_repeats: single-image forward passes per model for the latency percentiles.
        bf16: bf16 autocast (``None`` = on for CUDA, off for CPU).
        threads: torch CPU threads (``None`` = torch's default, all cores).
        sections: which of :data:`SECTIONS` to run.
        data: image folder for the loader figure (``None`` = synthetic phantoms).
        loader_limit: images used by the loader figure (``None`` = all).
        loader_workers: ``DataLoader`` workers of the cached-loader figure (0 = main process, training's default).
        epoch_config: experiment YAML of the epoch figure (``None`` = the defaults: vit_p16_w192_d6 + PoPE, 128 px).
        epoch_manifest: manifest of the epoch figure (``None`` = a split of ``data``, or of phantoms).
        epoch_overrides: ``key=value`` overrides of the epoch config.
        epoch_max_steps: timed batches of the epoch figure (``None`` = the whole epoch; else extrapolated).
        peak_sizes: matrix sides of the matmul peak (``None`` = 256-2048 on CPU, 1024-8192 on CUDA).
        work_dir: scratch folder for phantom data and caches (``None`` = a temporary folder).
        targets: Markdown file whose ``## Targets`` table to check (BENCHMARKS.md); ``None`` = no targets.
        quick: the test-sized run (``tiny`` size, phantoms, few repeats); set by :func:`quick_config`.
    """

    device: Literal["cpu", "cuda"] = "cpu"
    sizes: list[str] = field(default_factory=lambda: ["cpu", "seed"])
    pes: list[str] | None = None
    timm: bool = True
    repeats: int = 5
    warmup: int = 1
    batch: int | None = None
    infer_batch: int = 64
    latency_repeats: int = 30
    bf16: bool | None = None
    threads: int | None = None
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))
    data: Path | None = None
    loader_limit: int | None = None
    loader_workers: int = 0
    epoch_config: Path | None = None
    epoch_manifest: Path | None = None
    epoch_overrides: list[str] = field(default_factory=list)
    epoch_max_steps: int | None = None
    peak_sizes: tuple[int, ...] | None = None
    work_dir: Path | None = None
    targets: Path | None = None
    quick: bool = False

    def __post_init__(self) -> None:
        for s in self.sizes:
            SIZES.get(s)  # unknown names raise with a did-you-mean hint
        bad = [s for s in self.sections if s not in SECTIONS]
        if bad:
            raise ValueError(f"unknown bench sections {bad}; choose from {list(SECTIONS)}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")
        for pe in self.pes or []:
            if pe != TIMM:
                POS_ENCS.get(pe)  # unknown names raise with a did-you-mean hint, before any timing
        if self.data is not None and not Path(self.data).is_dir():
            raise FileNotFoundError(f"--data {str(self.data)!r} is not a folder; pass an image folder")
        if self.epoch_manifest is not None and not Path(self.epoch_manifest).is_file():
            raise FileNotFoundError(f"--manifest {str(self.epoch_manifest)!r} not found; pass a manifest CSV")


def quick_config(**changes: Any) -> BenchConfig:
    """A seconds-long run of every section on ``vit_p8_w32_d2`` at 32 px over phantoms (for tests and smoke checks)."""
    base: dict[str, Any] = {
        "sizes": ["tiny"],
        "pes": ["none", "pope", "rope_axial"],
        "repeats": 5,
        "warmup": 1,
        "infer_batch": 64,
        "latency_repeats": 10,
        "peak_sizes": (128, 256),
        "loader_limit": None,
        "epoch_max_steps": 2,
        "quick": True,
    }
    base.update(changes)
    return BenchConfig(**base)


def pos_encs(cfg: BenchConfig) -> list[str]:
    """The encodings to time, ``none`` first (the ratio base)."""
    names = list(cfg.pes) if cfg.pes else list_pos_encs()
    return list(dict.fromkeys(["none", *names]))


def bench_size(cfg: BenchConfig, name: str) -> BenchSize:
    """Benchmark size ``name`` with the config's batch."""
    s = SIZES.get(name)
    return BenchSize(s.preset, s.img_size, cfg.batch or s.batch, s.description)


def model_names(cfg: BenchConfig) -> list[str]:
    """The encodings of :func:`pos_encs`, then timm's twin when asked for."""
    return pos_encs(cfg) + ([TIMM] if cfg.timm else [])
