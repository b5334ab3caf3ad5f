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

``targets`` then checks the speed targets of the table that ``BenchConfig.targets`` names (BENCHMARKS.md,
:mod:`popevit.bench.targets`) against the figures, each ``met`` true/false or ``null`` when its figure was not
measured. The machine's load average is stored next to every figure: on a shared machine absolute times vary with
it, interleaved ratios much less. Every path (image folder, manifest, target table) comes from the config: nothing is
looked up in the checkout.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from popevit.bench.attention import pope_layouts, sdpa_backends
from popevit.bench.epoch import epoch_time
from popevit.bench.flops import matmul_peak
from popevit.bench.loader import loader_throughput
from popevit.bench.models import TIMM, batch_for, build_model, make_train_step
from popevit.bench.options import SECTIONS, BenchConfig, bench_size, pos_encs, quick_config
from popevit.bench.profiling import profile_step
from popevit.bench.steps import bench_inference, bench_memory, bench_train
from popevit.bench.targets import check_targets, read_targets
from popevit.bench.timing import load_average, machine_info
from popevit.data import make_split
from popevit.data.phantoms import synthesize

__all__ = ["SECTIONS", "BenchConfig", "quick_config", "run_bench"]  # the config is re-exported with the suite


def _phantom_data(work: Path, quick: bool) -> Path:
    root = work / "phantoms"
    if not root.is_dir():
        synthesize(root, per_class=4 if quick else 250, size=64 if quick else None, seed=0)
    return root


def _phantom_manifest(work: Path, data: Path) -> Path:
    out = work / "phantom_manifest.csv"
    if not out.is_file():
        make_split(data, out, seed=0, ratios=(0.5, 0.25, 0.25))
    return out


def _profile_missed(cfg: BenchConfig, res: dict[str, Any], bf16: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """Profile the models behind missed step-time targets, with ``none`` (and timm for none/timm) beside them."""
    wanted: dict[str, set[str]] = {}
    for t in res["targets"]:
        if t["met"] is False and t["model"] and t["size"] in cfg.sizes:
            wanted.setdefault(t["size"], {"none"}).add(t["model"])
            if "timm" in t["name"] and cfg.timm:
                wanted[t["size"]].add(TIMM)
    out: dict[str, Any] = {}
    for size_name, names in wanted.items():
        size = bench_size(cfg, size_name)
        x, y = batch_for(size, size.batch, cfg.device)
        for n in sorted(names):
            log(f"profiling {n} at {size_name}")
            torch.manual_seed(0)
            step = make_train_step(build_model(n, size).to(cfg.device).train(), x, y, bf16=bf16)
            out.setdefault(size_name, {})[n] = profile_step(step, steps=1)
    return out


def bench_peak(cfg: BenchConfig) -> dict[str, Any]:
    """The machine's matmul peak (:func:`popevit.bench.flops.matmul_peak`) with its threads and load."""
    sizes = cfg.peak_sizes or ((1024, 2048, 4096, 8192) if cfg.device == "cuda" else (256, 512, 1024, 2048))
    return {
        **matmul_peak(cfg.device, sizes, min_time=0.05 if cfg.quick else 0.3),
        "threads": torch.get_num_threads(),
        "load_avg": load_average(),
    }


def bench_loader(cfg: BenchConfig, work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Loader throughput over ``cfg.data`` (default: phantoms made in ``work``)."""
    data = cfg.data or _phantom_data(work, cfg.quick)
    log(f"loader over {data}")
    return loader_throughput(
        data,
        img_size=32 if cfg.quick else 128,
        limit=cfg.loader_limit,
        workers=cfg.loader_workers,
        epochs=2 if cfg.quick else 3,
        cache_dir=work / "loader-cache",
    )


def bench_epoch(cfg: BenchConfig, work: Path, bf16: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """One training epoch over ``cfg.epoch_manifest`` (default: a split of ``cfg.data``, or of phantoms)."""
    manifest, overrides = cfg.epoch_manifest, list(cfg.epoch_overrides)
    if manifest is None:
        manifest = _phantom_manifest(work, cfg.data or _phantom_data(work, cfg.quick))
        overrides = [f"data.cache_dir={work / 'epoch-cache'}", *overrides]
        if cfg.quick:
            overrides = ["model.name=vit_p8_w32_d2", "data.preprocess.img_size=32", "data.batch_size=4", *overrides]
    log(f"epoch over {manifest}")
    return epoch_time(
        cfg.epoch_config,
        manifest,
        overrides=overrides,
        max_steps=cfg.epoch_max_steps,
        warmup_steps=1 if cfg.quick else 2,
        device=cfg.device,
        bf16=bf16,
    )


def bench_attention(cfg: BenchConfig, bf16: bool) -> dict[str, Any]:
    """The SDPA backend each PE gets and PoPE's q/k-vs-v layouts at the last size."""
    size = bench_size(cfg, cfg.sizes[-1])
    return {
        "size": cfg.sizes[-1],
        "sdpa_backends": sdpa_backends(pos_encs(cfg), size, cfg.device, bf16=bf16, repeats=cfg.repeats),
        "pope_layouts": pope_layouts(size, cfg.device, bf16=bf16, repeats=cfg.repeats),
        "load_avg": load_average(),
    }


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
            res["peak"] = bench_peak(cfg)
        for size_name in cfg.sizes:
            if "train" in cfg.sections:
                log(f"training steps at {size_name}")
                res.setdefault("train", {})[size_name] = bench_train(cfg, size_name, res.get("peak"), bf16)
            if "inference" in cfg.sections:
                log(f"inference at {size_name}")
                res.setdefault("inference", {})[size_name] = bench_inference(cfg, size_name, bf16)
            if "memory" in cfg.sections:
                log(f"peak memory at {size_name}")
                res.setdefault("memory", {})[size_name] = bench_memory(cfg, size_name, bf16)
        if "loader" in cfg.sections:
            res["loader"] = bench_loader(cfg, work, log)
        if "epoch" in cfg.sections:
            res["epoch"] = bench_epoch(cfg, work, bf16, log)
        if "attention" in cfg.sections:
            log(f"attention backends at {cfg.sizes[-1]}")
            res["attention"] = bench_attention(cfg, bf16)
    res["targets"] = check_targets(res, read_targets(cfg.targets)) if cfg.targets is not None else []
    if "profile" in cfg.sections and "train" in cfg.sections:
        res["profile"] = _profile_missed(cfg, res, bf16, log)
    res["load_avg_end"] = load_average()
    return res
