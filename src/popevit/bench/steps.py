"""The figures measured at one benchmark size: training-step time, inference latency and throughput, peak memory.

Models are timed in interleaved rounds (:func:`popevit.bench.timing.interleaved`): one round runs one step of every
model in rotating order, so a load spike on a shared machine hits one round of all of them, and per-round ratios
cancel it.
"""

from __future__ import annotations

import gc
import statistics
from typing import Any

import torch

from popevit.bench.flops import matmul_reference, train_step_flops
from popevit.bench.memory import peak_memory
from popevit.bench.models import TIMM, BenchSize, batch_for, build_model, make_forward, make_train_step
from popevit.bench.options import BenchConfig, bench_size, model_names
from popevit.bench.timing import interleaved, load_average, percentile, summarize, synchronizer


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
    size = bench_size(cfg, size_name)
    names = model_names(cfg)
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
    size = bench_size(cfg, size_name)
    names = model_names(cfg)
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
    size = bench_size(cfg, size_name)
    names = model_names(cfg)
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
