"""Where a training step spends its time: ``torch.profiler`` operator totals, for targets that are missed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile


def profile_step(step: Callable[[], None], *, steps: int = 2, top: int = 12) -> dict[str, Any]:
    """Profile ``steps`` calls of ``step`` (after one untimed call) and rank operators by self CPU/device time.

    Args:
        step: one training step (see :func:`popevit.bench.models.make_train_step`).
        steps: profiled calls.
        top: operators listed.

    Returns:
        ``{"total_ms": per-step self time, "ops": [{"name", "ms_per_step", "share", "calls_per_step"}, ...]}``.
    """
    activities = [ProfilerActivity.CPU]
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    if cuda:
        activities.append(ProfilerActivity.CUDA)
    step()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    rows = [(e.key, getattr(e, attr), e.count) for e in prof.key_averages()]
    total = sum(t for _, t, _ in rows) or 1.0
    rows.sort(key=lambda r: -r[1])
    return {
        "total_ms": total / 1e3 / steps,
        "ops": [
            {"name": name, "ms_per_step": t / 1e3 / steps, "share": t / total, "calls_per_step": c / steps}
            for name, t, c in rows[:top]
        ],
    }
