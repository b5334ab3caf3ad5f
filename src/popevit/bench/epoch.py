"""Wall time of one training epoch of an experiment config, timed as a plain step loop over the cached loader.

This is the "CPU epoch of the default CPU configuration" figure (target: <= 60 s), for
``configs/experiments/vit_128px.yaml`` (``vit_p16_w192_d6`` with PoPE, 128 px, batch 32, AdamW, class-weighted
cross-entropy, gradient clipping 1.0) over the training split of a manifest. We time the loop
``for x, y in train_dataloader: step`` directly instead of ``popevit.training.train`` so that the figure is the
training epoch alone: no validation pass, no checkpointing, no logging, no Lightning start-up (which ``train`` adds
on top; its own ``metrics.csv`` gives the end-to-end time). The datamodule's ``setup`` (decode-once cache fill or
read) is timed separately.

With ``max_steps`` the loop stops early and the epoch time is extrapolated from the mean time per batch.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from popevit.bench.models import autocast
from popevit.bench.timing import load_average


def epoch_time(
    config: Path | None,
    manifest: Path,
    *,
    overrides: list[str] | None = None,
    max_steps: int | None = None,
    warmup_steps: int = 2,
    device: str = "cpu",
    bf16: bool = False,
) -> dict[str, Any]:
    """Time one training epoch of ``config`` over the ``train`` split of ``manifest``.

    Args:
        config: experiment YAML (``None`` = the defaults of :class:`popevit.config.ExperimentConfig`, which are the
            CPU configuration with PoPE).
        manifest: manifest CSV with a ``train`` split.
        overrides: ``key=value`` config overrides.
        max_steps: time this many batches after the warm-up and extrapolate (``None`` = the whole epoch).
        warmup_steps: untimed leading batches (allocator and first-call effects).
        device: ``"cpu"`` or ``"cuda"``.
        bf16: forward and loss under bf16 autocast (what ``precision: auto`` does on GPU).

    Returns:
        ``{"epoch_s", "extrapolated", "steps_timed", "batches_per_epoch", "images", "img_s", "setup_s", ...}``.
    """
    import torch
    import torch.nn.functional as F

    from popevit.config import load_config
    from popevit.data.datamodule import MRIDataModule
    from popevit.models import create_model
    from popevit.training.optim import build_optimizer
    from popevit.training.run import model_kwargs

    cfg = load_config(config, overrides)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    t0 = time.perf_counter()
    dm = MRIDataModule(cfg.data, Path(manifest), seed=cfg.train.seed)
    dm.setup("fit")
    setup_s = time.perf_counter() - t0
    loader = dm.train_dataloader()
    n_batches = len(loader)
    weights = dm.class_weights.to(device) if cfg.optim.class_weighted else None
    torch.manual_seed(cfg.train.seed)
    model = create_model(cfg.model.name, **model_kwargs(cfg, len(dm.classes))).to(device).train()
    opt = build_optimizer(model, cfg.optim)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, bf16):
            logits = model(x).float()
        loss = F.cross_entropy(logits, y, weight=weights, label_smoothing=cfg.optim.label_smoothing)
        loss.backward()
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    load_before = load_average()
    it = iter(loader)
    for _ in range(min(warmup_steps, n_batches)):
        step(*next(it))
    done, images = 0, 0
    sync()
    t0 = time.perf_counter()
    for x, y in it:
        step(x, y)
        done += 1
        images += len(y)
        if max_steps is not None and done >= max_steps:
            break
    sync()
    timed = time.perf_counter() - t0
    if done == 0:
        raise ValueError(f"the training split has only {n_batches} batches; lower warmup_steps")
    per_batch = timed / done
    return {
        "config": str(config) if config else "<defaults>",
        "model": cfg.model.name,
        "pos_enc": cfg.model.pos_enc,
        "img_size": cfg.data.preprocess.img_size,
        "batch_size": cfg.data.batch_size,
        "num_workers": cfg.data.num_workers,
        "threads": torch.get_num_threads(),
        "bf16": bf16,
        "images": len(dm.datasets["train"]),
        "batches_per_epoch": n_batches,
        "steps_timed": done,
        "extrapolated": done + min(warmup_steps, n_batches) < n_batches,
        "step_s": per_batch,
        "img_s": images / timed,
        "epoch_s": per_batch * n_batches if math.isfinite(per_batch) else float("nan"),
        "setup_s": setup_s,
        "load_avg_before": load_before,
        "load_avg_after": load_average(),
    }
