"""popevit's benchmark suite: speed against timm and against the machine's limit.

Public API::

    run_bench(BenchConfig(...)) -> dict              # every figure; quick_config() for a seconds-long run
    to_markdown(result) -> str                       # the tables of BENCHMARKS.md
    interleaved(fns, repeats=, warmup=)              # round-robin timing on a shared machine
    count_flops(fn) / train_step_flops(model, x, y)  # torch.utils.flop_counter, CPU attention included
    matmul_peak(device)                              # measured GFLOP/s peak
    peak_memory(fn, device)                          # RSS high-water mark (CPU) / allocator peak (CUDA)
    loader_throughput(data) / epoch_time(config, manifest)
    sdpa_backends(...) / pope_layouts(...)           # fused-attention backends per PE, PoPE's q/k-vs-v layouts
    step_time_vs_tokens(...) / throughput_vs_batch(...) / plot_sweeps(...)

``popevit bench`` and ``benchmarks/bench_suite.py`` are thin wrappers around :func:`run_bench`.
"""

from __future__ import annotations

from popevit.bench.flops import count_flops, matmul_peak, train_step_flops
from popevit.bench.memory import peak_memory
from popevit.bench.models import SIZES, TIMM, BenchSize, build_model, make_forward, make_train_step, timm_twin
from popevit.bench.report import to_markdown
from popevit.bench.suite import SECTIONS, BenchConfig, check_targets, quick_config, run_bench
from popevit.bench.timing import interleaved, load_average, machine_info, percentile, summarize

__all__ = [
    "SECTIONS",
    "SIZES",
    "TIMM",
    "BenchConfig",
    "BenchSize",
    "build_model",
    "check_targets",
    "count_flops",
    "interleaved",
    "load_average",
    "machine_info",
    "make_forward",
    "make_train_step",
    "matmul_peak",
    "peak_memory",
    "percentile",
    "quick_config",
    "run_bench",
    "summarize",
    "timm_twin",
    "to_markdown",
    "train_step_flops",
]
