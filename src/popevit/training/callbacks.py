"""Callbacks of the recipe that Lightning does not ship."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, Timer, WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn

from popevit.io import atomic_write_json


class RankMetricsRecorder(L.Callback):
    """Under DDP, each rank writes the validation metrics it logged and how many images it saw itself.

    ``logs/rank<r>_val.json`` lets a user (and the DDP test) confirm that ranks agree on metrics computed from
    different shards of the validation set, i.e. that torchmetrics synchronised them.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.local_val_images = 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.local_val_images = 0

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self.local_val_images += len(batch[1])

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size < 2 or trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        record = {
            "rank": trainer.global_rank,
            "epoch": trainer.current_epoch,
            "local_val_images": self.local_val_images,
            "metrics": metrics,
        }
        path = self.out_dir / "logs" / f"rank{trainer.global_rank}_val.json"
        atomic_write_json(path, record)


class InterruptRecorder(L.Callback):
    """Remembers why ``trainer.fit`` stopped early: Lightning turns Ctrl-C into ``SystemExit(1)`` after its own
    cleanup, and SIGTERM into ``SIGTERMException`` at the next batch boundary; both pass through ``on_exception``."""

    def __init__(self) -> None:
        self.exception: BaseException | None = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.exception = exception


def max_time_timer(trainer: L.Trainer) -> Timer | None:
    """The ``Timer`` that Lightning adds to enforce ``max_time`` (``train.max_minutes``), or None without a cap."""
    return next((c for c in trainer.callbacks if isinstance(c, Timer)), None)


class ImagesSeen(L.Callback):
    """Counts the training images a run consumed (this rank's batches times the world size), partial last epochs
    included, and keeps the count in the checkpoint so a resumed run goes on counting: the compute figure that
    budget-matched comparisons report (run.json ``images_seen``)."""

    def __init__(self) -> None:
        self.count = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.count += len(batch[0]) * trainer.world_size

    def state_dict(self) -> dict[str, int]:
        return {"count": self.count}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.count = int(state_dict["count"])


class EarlierWallClock(L.Callback):
    """The wall time a resumed run spent training before this process, kept in the checkpoint like
    :class:`ImagesSeen`, so that run.json ``wall_s`` is the run's whole training time and images/s stays images seen
    over the time they took. What an interrupted process did after its last checkpoint is lost with its work, and
    is not counted."""

    def __init__(self) -> None:
        self.earlier_s = 0.0
        self._t0: float | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def state_dict(self) -> dict[str, float]:
        now = 0.0 if self._t0 is None else time.perf_counter() - self._t0
        return {"wall_s": self.earlier_s + now}

    def load_state_dict(self, state_dict: dict[str, float]) -> None:
        self.earlier_s = float(state_dict["wall_s"])


@torch.no_grad()
def warm_ema_multi_avg_fn(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged, *, decay: float):
    """One EMA step whose decay ramps with the updates already averaged, n: ``min(decay, (1 + n) / (10 + n))``.

    The ``num_updates`` rule of TensorFlow's ``ExponentialMovingAverage``: decay 2/11 at the second update, 0.5 at
    n = 8, 0.9 at n = 80, and 0.99 only after ~890 updates. The step itself is torch's EMA (a fused lerp over each
    group of tensors), run at that decay.
    """
    n = float(num_averaged)  # AveragedModel has synchronised on its counter already
    get_ema_multi_avg_fn(min(decay, (1.0 + n) / (10.0 + n)))(averaged, current, num_averaged)


def ema_callback(decay: float, *, warmup: bool = False) -> WeightAveraging:
    """Lightning's EMA of the weights (buffers included); with ``warmup`` the decay ramps as in
    ``warm_ema_multi_avg_fn``.

    A fixed decay of 0.99 keeps ~100 steps of history from step one, so in a run of a few hundred steps the average
    still carries the random initialisation (docs/experiments/budget_15min.md: a distilled student whose EMA
    collapsed to one class).
    """
    if not warmup:
        return EMAWeightAveraging(decay=decay)
    return WeightAveraging(multi_avg_fn=partial(warm_ema_multi_avg_fn, decay=decay))
