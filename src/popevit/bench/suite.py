"""The benchmark suite behind ``popevit bench`` and BENCHMARKS.md: every speed figure in one JSON document.

Sections (each can be switched off):

- ``peak``: the machine's matmul peak (:func:`popevit.bench.flops.matmul_peak`).
- ``train``: per size (``cpu``, ``seed``) and positional encoding, plus timm's twin: training-step time (median of
  ``repeats`` interleaved rounds after ``warmup``), images/s, ratio to ``none`` and to timm, FLOPs per step,
  achieved GFLOP/s and share of the peak.
- ``inference``: latency p50/p95 of one image and throughput at batch 64, interleaved likewise.
- ``memory``: peak memory of two training steps of a freshly built model (:mod:`popevit.bench.memory`).
- ``loader``: decode-once loader throughput, cold / warm disk / cached (:mod:`popevit.bench.loader`).
- ``epoch``: one epoch of the default CPU configuration as a plain step loop (:mod:`popevit.bench.epoch`).
- ``attention``: the SDPA backend each PE gets and PoPE's q/k-vs-v layouts (:mod:`popevit.bench.attention`).
- ``profile``: ``torch.profiler`` operator totals for the models behind missed targets.

``targets`` then checks the speed targets (BENCHMARKS.md) against the figures, each ``met`` true/false or ``null`` when
its figure was not measured. The machine's load average is stored next to every figure: on a shared machine absolute
times vary with it, interleaved ratios much less.
"""

from __future__ import annotations

import datetime as dt
import gc
import os
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from popevit.bench.flops import matmul_peak, matmul_reference, train_step_flops
from popevit.bench.memory import peak_memory
from popevit.bench.models import SIZES, TIMM, BenchSize, batch_for, build_model, make_forward, make_train_step
from popevit.bench.timing import interleaved, load_average, machine_info, percentile, summarize, synchronizer
from popevit.models.presets import FORMER_NAMES

SECTIONS = ("peak", "train", "inference", "memory", "loader", "epoch", "attention", "profile")
REAL_DATA = Path(
    os.environ.get("POPEVIT_REAL_DATA", Path(__file__).resolve().parents[4] / "shared/data/brain-tumor-mri/Training")
)
DEFAULT_MANIFEST = Path(__file__).resolve().parents[3] / "runs/splits/kaggle_train_seed0.csv"

# the speed targets of BENCHMARKS.md
POPE_OVER_NONE = 1.10
ROPE_OVER_NONE = 1.05
NONE_OVER_TIMM = 1.00
PEAK_SHARE = 0.60
CACHED_LOADER_IMG_S = 3000.0
CPU_EPOCH_S = 60.0


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
        data: image folder for the loader figure (``None`` = the Kaggle folder when present, else phantoms).
        loader_limit: images used by the loader figure (``None`` = all).
        loader_workers: ``DataLoader`` workers of the cached-loader figure (0 = main process, training's default).
        epoch_config: experiment YAML of the epoch figure (``None`` = the defaults: vit_p16_w192_d6 + PoPE, 128 px).
        epoch_manifest: manifest of the epoch figure (``None`` = ``runs/splits/kaggle_train_seed0.csv`` when present,
            else a phantom split).
        epoch_overrides: ``key=value`` overrides of the epoch config.
        epoch_max_steps: timed batches of the epoch figure (``None`` = the whole epoch; else extrapolated).
        peak_sizes: matrix sides of the matmul peak (``None`` = 256-2048 on CPU, 1024-8192 on CUDA).
        work_dir: scratch folder for phantom data and caches (``None`` = a temporary folder).
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
        from popevit.models import POS_ENCS

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


def _pes(cfg: BenchConfig) -> list[str]:
    from popevit.models import list_pos_encs

    names = list(cfg.pes) if cfg.pes else list_pos_encs()
    return list(dict.fromkeys(["none", *names]))


def _size(cfg: BenchConfig, name: str) -> BenchSize:
    s = SIZES.get(name)
    return BenchSize(s.preset, s.img_size, cfg.batch or s.batch, s.description)


def _tokens(model: torch.nn.Module, size: BenchSize) -> int:
    patch = getattr(model, "patch_size", None) or model.patch_embed.patch_size[0]
    prefix = getattr(model, "num_prefix_tokens", 0)
    return prefix + (size.img_size // int(patch)) ** 2


MATMUL = "_matmul"


def bench_train(cfg: BenchConfig, size_name: str, peak: dict[str, Any] | None, bf16: bool) -> dict[str, Any]:
    """Interleaved training-step times, ratios, FLOPs and share of peak at one size (see the module docstring).

    With a measured ``peak``, a matmul at the peak's best size doing as many FLOPs as the ``none`` step joins the
    rounds, and ``share_of_peak_interleaved`` is the median over rounds of (step GFLOP/s) / (matmul GFLOP/s): the
    share of the peak under the same momentary load, which a shared machine needs.
    """
    size = _size(cfg, size_name)
    names = _pes(cfg) + ([TIMM] if cfg.timm else [])
    x, y = batch_for(size, size.batch, cfg.device)
    torch.manual_seed(0)
    models = {n: build_model(n, size).to(cfg.device).train() for n in names}
    flops = {n: train_step_flops(m, x, y) for n, m in models.items()}
    steps = {n: make_train_step(m, x, y, bf16=bf16) for n, m in models.items()}
    mm_flops = 0
    if peak:
        best_n = max(peak["by_size"], key=lambda k: peak["by_size"][k])
        steps[MATMUL], mm_flops = matmul_reference(int(best_n), flops["none"], cfg.device)
    load_before = load_average()
    times = interleaved(steps, repeats=cfg.repeats, warmup=cfg.warmup, sync=synchronizer(cfg.device))
    out: dict[str, Any] = {
        "preset": size.preset,
        "img_size": size.img_size,
        "batch": size.batch,
        "tokens": _tokens(models["none"], size),
        "bf16": bf16,
        "threads": torch.get_num_threads(),
        "repeats": cfg.repeats,
        "warmup": cfg.warmup,
        "load_avg_before": load_before,
        "load_avg_after": load_average(),
        "models": {},
    }
    mm_times = times.pop(MATMUL, None)
    med = {n: statistics.median(t) for n, t in times.items()}
    if mm_times:
        out["matmul_reference"] = {"gflop": mm_flops / 1e9, "gflops": mm_flops / 1e9 / statistics.median(mm_times)}
    # Per-round ratios pair each round's samples, so a load spike in one round cancels; their median is the figure.
    for n, t in times.items():
        s = summarize(t)
        row: dict[str, Any] = {
            "step_ms": s["median_s"] * 1e3,
            "min_ms": s["min_s"] * 1e3,
            "p95_ms": s["p95_s"] * 1e3,
            "iqr_rel": s["iqr_rel"],
            "img_s": size.batch / s["median_s"],
            "ratio_none": statistics.median(a / b for a, b in zip(t, times["none"], strict=True)),
            "ratio_none_of_medians": med[n] / med["none"],
            "gflop_per_step": flops[n] / 1e9,
            "gflops": flops[n] / 1e9 / s["median_s"],
            "gflops_best": flops[n] / 1e9 / s["min_s"],
            "samples_ms": [v * 1e3 for v in t],
        }
        if TIMM in times:
            row["ratio_timm"] = statistics.median(a / b for a, b in zip(t, times[TIMM], strict=True))
        if peak:
            row["share_of_peak"] = row["gflops"] / peak["peak_gflops"]
            row["share_of_peak_best"] = row["gflops_best"] / peak["peak_gflops"]
        if mm_times:
            row["share_of_peak_interleaved"] = statistics.median(
                (flops[n] / a) / (mm_flops / b) for a, b in zip(t, mm_times, strict=True)
            )
        out["models"][n] = row
    return out


def bench_inference(cfg: BenchConfig, size_name: str, bf16: bool) -> dict[str, Any]:
    """Single-image latency p50/p95 and batch-``infer_batch`` throughput, interleaved over models."""
    size = _size(cfg, size_name)
    names = _pes(cfg) + ([TIMM] if cfg.timm else [])
    torch.manual_seed(0)
    models = {n: build_model(n, size).to(cfg.device).eval() for n in names}
    x1, _ = batch_for(size, 1, cfg.device)
    xb, _ = batch_for(size, cfg.infer_batch, cfg.device)
    sync = synchronizer(cfg.device)
    load_before = load_average()
    lat = interleaved(
        {n: make_forward(m, x1, bf16=bf16) for n, m in models.items()}, repeats=cfg.latency_repeats, warmup=3, sync=sync
    )
    thr = interleaved(
        {n: make_forward(m, xb, bf16=bf16) for n, m in models.items()},
        repeats=cfg.repeats,
        warmup=cfg.warmup,
        sync=sync,
    )
    rows = {}
    for n in names:
        rows[n] = {
            "latency_ms_p50": percentile(lat[n], 50) * 1e3,
            "latency_ms_p95": percentile(lat[n], 95) * 1e3,
            "throughput_img_s": cfg.infer_batch / statistics.median(thr[n]),
            "ratio_none_batch": statistics.median(a / b for a, b in zip(thr[n], thr["none"], strict=True)),
        }
    return {
        "img_size": size.img_size,
        "batch": cfg.infer_batch,
        "bf16": bf16,
        "latency_repeats": cfg.latency_repeats,
        "load_avg_before": load_before,
        "load_avg_after": load_average(),
        "models": rows,
    }


def bench_memory(cfg: BenchConfig, size_name: str, bf16: bool) -> dict[str, Any]:
    """Peak memory added by two training steps (AdamW state created on the first) of each freshly built model."""
    size = _size(cfg, size_name)
    names = _pes(cfg) + ([TIMM] if cfg.timm else [])
    rows = {}
    gc.collect()
    gc.freeze()  # older objects leave the collector's view: peak_memory's gc.collect() then takes ms, not seconds
    try:
        for n in names:
            rows[n] = _memory_one(n, size, cfg.device, bf16)
    finally:
        gc.unfreeze()
    return {"batch": size.batch, "img_size": size.img_size, "load_avg": load_average(), "models": rows}


def _memory_one(n: str, size: BenchSize, device: str, bf16: bool) -> dict[str, Any]:
    torch.manual_seed(0)
    model = build_model(n, size).to(device).train()
    x, y = batch_for(size, size.batch, device)
    params_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    step = make_train_step(model, x, y, bf16=bf16)

    def two_steps() -> None:
        step()
        step()

    return {**peak_memory(two_steps, device), "params_mb": params_mb}


def _phantom_data(work: Path, quick: bool) -> Path:
    from popevit.data.phantoms import synthesize

    root = work / "phantoms"
    if not root.is_dir():
        synthesize(root, per_class=4 if quick else 250, size=64 if quick else None, seed=0)
    return root


def _phantom_manifest(work: Path, data: Path) -> Path:
    from popevit.data import make_split

    out = work / "phantom_manifest.csv"
    if not out.is_file():
        make_split(data, out, seed=0, ratios=(0.5, 0.25, 0.25))
    return out


def check_targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The speed targets against the figures in ``res``: ``met`` is true/false, or ``None`` when not measured.

    Each entry: ``{"name", "target", "value", "met", "where", "model", "size"}`` (``model``/``size``: what a missed
    step-time target points at, for profiling).
    """
    out: list[dict[str, Any]] = []
    train = res.get("train", {})

    def add(name: str, target: str, value: float | None, ok: bool | None, where: str, **ref: str | None) -> None:
        out.append(
            {
                "name": name,
                "target": target,
                "value": value,
                "met": ok,
                "where": where,
                "model": ref.get("model"),
                "size": ref.get("size"),
            }
        )

    seed = train.get("seed", {}).get("models", {})
    for pe, limit in (
        ("pope", POPE_OVER_NONE),
        ("pope_mixed", POPE_OVER_NONE),
        ("rope_axial", ROPE_OVER_NONE),
        ("rope_mixed", ROPE_OVER_NONE),
    ):
        v = seed.get(pe, {}).get("ratio_none")
        add(
            f"{pe} / none step time (seed)",
            f"<= {limit:.2f}",
            v,
            None if v is None else v <= limit,
            "train.seed",
            model=pe,
            size="seed",
        )
    for size_name, size in train.items():
        v = size["models"].get("none", {}).get("ratio_timm")
        add(
            f"none / timm step time ({size_name})",
            f"<= {NONE_OVER_TIMM:.2f}",
            v,
            None if v is None else v <= NONE_OVER_TIMM,
            f"train.{size_name}",
            model="none",
            size=size_name,
        )
    cpu = train.get("cpu", {}).get("models", {})
    on_cpu = res.get("config", {}).get("device") == "cpu"
    for pe in ("pope", "none"):
        row = cpu.get(pe, {})
        v = row.get("share_of_peak_interleaved", row.get("share_of_peak")) if on_cpu else None
        add(
            f"CPU training GFLOP/s / matmul peak ({pe}, cpu size)",
            f">= {PEAK_SHARE:.0%}",
            v,
            None if v is None else v >= PEAK_SHARE,
            "train.cpu",
            model=pe,
            size="cpu",
        )
    v = res.get("loader", {}).get("cached_img_s")
    add(
        "cached loader images/s",
        f">= {CACHED_LOADER_IMG_S:.0f}",
        v,
        None if v is None else v >= CACHED_LOADER_IMG_S,
        "loader",
    )
    ep = res.get("epoch", {})
    v = (
        ep.get("epoch_s")
        if on_cpu and FORMER_NAMES.get(ep.get("model"), ep.get("model")) == "vit_p16_w192_d6"
        else None
    )
    add(
        "CPU epoch of the default CPU configuration (s)",
        f"<= {CPU_EPOCH_S:.0f}",
        v,
        None if v is None else v <= CPU_EPOCH_S,
        "epoch",
    )
    return out


def _profile_missed(cfg: BenchConfig, res: dict[str, Any], bf16: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Profile the models behind missed step-time targets, with ``none`` (and timm for none/timm) beside them."""
    from popevit.bench.profiling import profile_step

    wanted: dict[str, set[str]] = {}
    for t in res["targets"]:
        if t["met"] is False and t["model"] and t["size"] in cfg.sizes:
            wanted.setdefault(t["size"], {"none"}).add(t["model"])
            if "timm" in t["name"] and cfg.timm:
                wanted[t["size"]].add(TIMM)
    out: dict[str, Any] = {}
    for size_name, names in wanted.items():
        size = _size(cfg, size_name)
        x, y = batch_for(size, size.batch, cfg.device)
        for n in sorted(names):
            log(f"profiling {n} at {size_name}")
            torch.manual_seed(0)
            step = make_train_step(build_model(n, size).to(cfg.device).train(), x, y, bf16=bf16)
            out.setdefault(size_name, {})[n] = profile_step(step, steps=1)
    return out


def run_bench(cfg: BenchConfig, log: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Run the suite and return every figure as a JSON-ready dict (see the module docstring for the sections).

    Args:
        cfg: what to measure.
        log: progress messages (``print`` for the CLI).

    Returns:
        ``{"machine", "config", "peak", "train", "inference", "memory", "loader", "epoch", "attention",
        "profile", "targets", ...}``; sections not run are absent.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    bf16 = cfg.device == "cuda" if cfg.bf16 is None else cfg.bf16
    res: dict[str, Any] = {
        "schema": 1,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(cfg.device).to_dict(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items()},
        "load_avg_start": load_average(),
    }
    res["config"]["bf16_resolved"] = bf16
    with tempfile.TemporaryDirectory(prefix="popevit-bench-") as tmp:
        work = Path(cfg.work_dir) if cfg.work_dir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if "peak" in cfg.sections:
            log("matmul peak")
            peak_sizes = cfg.peak_sizes or (
                (1024, 2048, 4096, 8192) if cfg.device == "cuda" else (256, 512, 1024, 2048)
            )
            res["peak"] = {
                **matmul_peak(cfg.device, peak_sizes, min_time=0.05 if cfg.quick else 0.3),
                "threads": torch.get_num_threads(),
                "load_avg": load_average(),
            }
        peak = res.get("peak")
        for size_name in cfg.sizes:
            if "train" in cfg.sections:
                log(f"training steps at {size_name}")
                res.setdefault("train", {})[size_name] = bench_train(cfg, size_name, peak, bf16)
            if "inference" in cfg.sections:
                log(f"inference at {size_name}")
                res.setdefault("inference", {})[size_name] = bench_inference(cfg, size_name, bf16)
            if "memory" in cfg.sections:
                log(f"peak memory at {size_name}")
                res.setdefault("memory", {})[size_name] = bench_memory(cfg, size_name, bf16)
        if "loader" in cfg.sections:
            from popevit.bench.loader import loader_throughput

            data = cfg.data or (REAL_DATA if REAL_DATA.is_dir() and not cfg.quick else _phantom_data(work, cfg.quick))
            log(f"loader over {data}")
            res["loader"] = loader_throughput(
                data,
                img_size=32 if cfg.quick else 128,
                limit=cfg.loader_limit,
                workers=cfg.loader_workers,
                epochs=2 if cfg.quick else 3,
                cache_dir=work / "loader-cache",
            )
        if "epoch" in cfg.sections:
            from popevit.bench.epoch import epoch_time

            manifest, overrides = cfg.epoch_manifest, list(cfg.epoch_overrides)
            if manifest is None and (cfg.quick or not DEFAULT_MANIFEST.is_file()):
                manifest = _phantom_manifest(work, cfg.data or _phantom_data(work, cfg.quick))
                overrides = [f"data.cache_dir={work / 'epoch-cache'}", *overrides]
                if cfg.quick:
                    overrides = [
                        "model.name=vit_p8_w32_d2",
                        "data.preprocess.img_size=32",
                        "data.batch_size=4",
                        *overrides,
                    ]
            log(f"epoch over {manifest or DEFAULT_MANIFEST}")
            res["epoch"] = epoch_time(
                cfg.epoch_config,
                manifest or DEFAULT_MANIFEST,
                overrides=overrides,
                max_steps=cfg.epoch_max_steps,
                warmup_steps=1 if cfg.quick else 2,
                device=cfg.device,
                bf16=bf16,
            )
        if "attention" in cfg.sections:
            from popevit.bench.attention import pope_layouts, sdpa_backends

            size = _size(cfg, cfg.sizes[-1])
            log(f"attention backends at {cfg.sizes[-1]}")
            res["attention"] = {
                "size": cfg.sizes[-1],
                "sdpa_backends": sdpa_backends(_pes(cfg), size, cfg.device, bf16=bf16, repeats=cfg.repeats),
                "pope_layouts": pope_layouts(size, cfg.device, bf16=bf16, repeats=cfg.repeats),
                "load_avg": load_average(),
            }
    res["targets"] = check_targets(res)
    if "profile" in cfg.sections and "train" in cfg.sections:
        res["profile"] = _profile_missed(cfg, res, bf16, log)
    res["load_avg_end"] = load_average()
    return res
