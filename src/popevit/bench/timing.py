"""Interleaved wall-clock timing on a shared machine, order statistics, and the machine record of every figure.

On a machine shared with other processes, absolute times drift with the load; ratios between models stay meaningful
only when the models are measured side by side. :func:`interleaved` therefore runs one call of every candidate per
round (rotating the order each round so that no model always follows the same neighbour), discards the warm-up
rounds, and reports per-candidate samples; the figure is their median. The load average is recorded with every
figure (:func:`load_average`).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import timm
import torch


def load_average() -> list[float]:
    """The 1/5/15-minute load averages (``[-1, -1, -1]`` where the OS has none, e.g. Windows)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return [-1.0, -1.0, -1.0]


def synchronizer(device: str) -> Callable[[], None]:
    """A no-argument function that waits for queued work on ``device`` (CUDA), or does nothing (CPU)."""
    if device.startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def interleaved(
    fns: Mapping[str, Callable[[], Any]],
    *,
    repeats: int,
    warmup: int = 1,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """Time every function once per round, round-robin, for ``warmup + repeats`` rounds.

    Args:
        fns: name -> function to time (one call = one sample).
        repeats: timed rounds kept (>= 1).
        warmup: leading rounds discarded (allocator, autotuning and lazy-init effects).
        sync: called before starting and before stopping each clock (``torch.cuda.synchronize`` on GPU).

    Returns:
        name -> ``repeats`` durations in seconds, in round order.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    names = list(fns)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:  # rotate the order each round
            sync()
            t0 = time.perf_counter()
            fns[name]()
            sync()
            if r >= warmup:
                out[name].append(time.perf_counter() - t0)
    return out


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated ``q``-th percentile (0-100) of a non-empty sample."""
    if not xs:
        raise ValueError("percentile of an empty sample")
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(xs: list[float]) -> dict[str, float]:
    """Median, min, p95 and relative spread ``(p75 - p25) / median`` of a sample of durations (seconds)."""
    med = statistics.median(xs)
    return {
        "median_s": med,
        "min_s": min(xs),
        "p95_s": percentile(xs, 95),
        "iqr_rel": (percentile(xs, 75) - percentile(xs, 25)) / med if med > 0 else 0.0,
        "n": len(xs),
    }


@dataclass
class Machine:
    """Where a figure was measured."""

    platform: str
    processor: str
    cpus: int | None
    torch_threads: int
    torch: str
    timm: str
    device: str
    device_name: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def machine_info(device: str) -> Machine:
    """Describe this machine for ``device`` (``"cpu"`` or ``"cuda"``)."""

    processor = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            processor = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), processor)
    except OSError:
        pass
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else processor
    return Machine(
        platform=platform.platform(),
        processor=processor,
        cpus=os.cpu_count(),
        torch_threads=torch.get_num_threads(),
        torch=torch.__version__,
        timm=timm.__version__,
        device=device,
        device_name=name,
    )
