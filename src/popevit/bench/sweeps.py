"""The two sweeps plotted in BENCHMARKS.md: step time vs number of tokens per PE, throughput vs batch size.

Both time training steps (forward + backward + AdamW) interleaved over models at each point, median of ``repeats``
rounds after ``warmup``, on one preset whose input side varies (tokens) or whose batch varies (throughput).
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch

from popevit.bench.models import TIMM, BenchSize, batch_for, build_model, make_train_step
from popevit.bench.timing import interleaved, load_average, synchronizer
from popevit.io import atomic_savefig


def _point(names: list[str], size: BenchSize, device: str, repeats: int, warmup: int) -> dict[str, float]:
    x, y = batch_for(size, size.batch, device)
    torch.manual_seed(0)
    steps = {n: make_train_step(build_model(n, size).to(device).train(), x, y) for n in names}
    times = interleaved(steps, repeats=repeats, warmup=warmup, sync=synchronizer(device))
    return {n: statistics.median(t) for n, t in times.items()}


def step_time_vs_tokens(
    pes: list[str],
    *,
    preset: str = "vit_p16_w192_d6",
    img_sizes: tuple[int, ...] = (64, 96, 128, 160, 192),
    batch: int = 16,
    patch: int = 16,
    device: str = "cpu",
    repeats: int = 5,
    warmup: int = 1,
    timm: bool = True,
) -> dict[str, Any]:
    """Median training-step ms per model at each input side; ``tokens = (side / patch)^2`` (mean pooling, no CLS).

    Returns:
        ``{"preset", "batch", "points": [{"img_size", "tokens", "load_avg", "ms": {model: ms}}, ...]}``.
    """
    names = list(dict.fromkeys(pes)) + ([TIMM] if timm else [])
    points = []
    for s in img_sizes:
        med = _point(names, BenchSize(preset, s, batch, ""), device, repeats, warmup)
        points.append(
            {
                "img_size": s,
                "tokens": (s // patch) ** 2,
                "load_avg": load_average(),
                "ms": {n: v * 1e3 for n, v in med.items()},
            }
        )
    return {"preset": preset, "batch": batch, "points": points}


def throughput_vs_batch(
    pes: list[str],
    *,
    preset: str = "vit_p16_w192_d6",
    img_size: int = 128,
    batches: tuple[int, ...] = (1, 4, 8, 16, 32, 64),
    device: str = "cpu",
    repeats: int = 5,
    warmup: int = 1,
    timm: bool = True,
) -> dict[str, Any]:
    """Training images/s per model at each batch size.

    Returns:
        ``{"preset", "img_size", "points": [{"batch", "load_avg", "img_s": {model: img/s}}, ...]}``.
    """
    names = list(dict.fromkeys(pes)) + ([TIMM] if timm else [])
    points = []
    for b in batches:
        med = _point(names, BenchSize(preset, img_size, b, ""), device, repeats, warmup)
        points.append({"batch": b, "load_avg": load_average(), "img_s": {n: b / v for n, v in med.items()}})
    return {"preset": preset, "img_size": img_size, "points": points}


def plot_sweeps(tokens: dict[str, Any] | None, batches: dict[str, Any] | None, out_dir: Path) -> list[Path]:
    """Write ``step_time_vs_tokens.png`` and ``throughput_vs_batch.png`` (log-log) into ``out_dir``; returns paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if tokens:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [p["tokens"] for p in tokens["points"]]
        for n in tokens["points"][0]["ms"]:
            ax.plot(xs, [p["ms"][n] for p in tokens["points"]], marker="o", label=n, ls="--" if n == TIMM else "-")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="tokens per image",
            ylabel="training step, ms (median)",
            title=f"{tokens['preset']}, batch {tokens['batch']}: step time vs tokens",
        )
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out_dir / "step_time_vs_tokens.png")
        atomic_savefig(fig, written[-1], dpi=120)
        plt.close(fig)
    if batches:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [p["batch"] for p in batches["points"]]
        for n in batches["points"][0]["img_s"]:
            ax.plot(xs, [p["img_s"][n] for p in batches["points"]], marker="o", label=n, ls="--" if n == TIMM else "-")
        ax.set(
            xscale="log",
            xlabel="batch size",
            ylabel="training images/s (median)",
            title=f"{batches['preset']}, {batches['img_size']} px: throughput vs batch",
        )
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(out_dir / "throughput_vs_batch.png")
        atomic_savefig(fig, written[-1], dpi=120)
        plt.close(fig)
    return written
