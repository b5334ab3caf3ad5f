"""Provenance of a run: the code, data, machine and time behind its numbers (the shared part of ``run.json`` and
``pretrain.json``).

The commit is read once per process, before the first run trains, so that a run names the code it imported even
when HEAD moves while it trains. The CPU model and vector instruction set are recorded because wall-clock budgets
depend on them. The training callbacks import Lightning, a heavy import made only by :func:`provenance`.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import torch

from popevit import __version__
from popevit.artifact import file_sha256
from popevit.training.fit import FitOutcome

_HEAD: list[str] = []  # the commit, once read: the imported code does not change within a process


def git_commit() -> str | None:
    """HEAD of the source tree, read once per process; ``prepare_run_dir`` reads it before the first run of a
    process trains, so run.json names the code the run imported even when HEAD moves while it trains. A failed read
    is not cached."""
    if _HEAD:
        return _HEAD[0]
    try:
        root = Path(__file__).resolve().parents[3]
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    head = out.stdout.strip()
    if out.returncode != 0 or not head:  # not a git checkout (an installed wheel)
        return None
    _HEAD.append(head)
    return head


def _cpu_device() -> str:
    """The CPU budget a run had: the torch threads it trained with and the machine's cores."""
    n = torch.get_num_threads()
    return f"cpu ({n} thread{'s' if n > 1 else ''} of {os.cpu_count()} cores)"


def cpu_model() -> dict[str, str]:
    """The CPU behind a wall-clock budget: its model name (``/proc/cpuinfo``, else ``platform.processor()``) and the
    vector instruction set torch's kernels use on it. Two 2-core machines can differ by 1.5x in a run's wall time, and
    runs with the same seed differ between them by about a seed's spread
    (docs/experiments/pe_study_residual_stem.md)."""
    import platform

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            name = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), name)
    except OSError:
        pass
    return {"model": name, "capability": torch.backends.cpu.get_cpu_capability()}


def provenance(
    fit: FitOutcome, trainer: Any, manifest: Path | None, on_gpu: bool, precision: str, resume: bool
) -> dict[str, Any]:
    """The record shared by run.json and pretrain.json: version, commit, data, time, epochs, images seen, whether the
    ``train.max_minutes`` cap ended the run, device."""
    from popevit.training.callbacks import ImagesSeen, max_time_timer  # heavy import: Lightning

    seen = next((c.count for c in trainer.callbacks if isinstance(c, ImagesSeen)), None)
    timer = max_time_timer(trainer)
    time_left = timer.time_remaining() if timer is not None else None
    return {
        "popevit_version": __version__,
        "git_commit": git_commit(),
        "manifest_sha256": None if manifest is None else file_sha256(manifest),
        "wall_s": round(fit.wall_s, 2),
        "wall_s_before_resume": round(fit.earlier_s, 2),  # of wall_s; 0 unless resumed
        "epochs": trainer.current_epoch,
        "best_epoch": fit.best.get("epoch") if fit.best else None,
        "best_checkpoint": Path(fit.best_path).name if fit.best_path else None,
        "images_seen": seen,
        "hit_time_cap": time_left is not None and time_left <= 0,
        # the largest group lr at the end: ~0 when the schedule has decayed (optim.schedule_clock), high when cut off
        "final_lr": max((g["lr"] for o in trainer.optimizers for g in o.param_groups), default=None),
        "device": torch.cuda.get_device_name() if on_gpu else _cpu_device(),
        "cpu": cpu_model(),
        "precision": precision,
        "resumed": resume,
    }
