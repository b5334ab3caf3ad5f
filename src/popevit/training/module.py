"""LightningModule for the seed recipe. It wraps the plain model; it does not own it.

The module is built from config primitives (model name + kwargs, class list, optimizer settings, class weights),
saved as hyper-parameters, so a checkpoint rebuilds itself and ``popevit.artifact`` rebuilds the plain model
without Lightning.
"""

from __future__ import annotations

import random
from functools import partial
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassF1Score

from popevit.config import OptimConfig
from popevit.models import create_model
from popevit.training.optim import build_optimizer, warmup_cosine


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; the last good checkpoint is kept."""


def stage_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """Epoch-level metrics (accuracy, balanced accuracy, macro and per-class AUROC, macro F1) for one stage."""
    k = num_classes
    return MetricCollection(
        {
            "acc": MulticlassAccuracy(k, average="micro"),
            "bacc": MulticlassAccuracy(k, average="macro"),  # mean per-class recall = balanced accuracy
            "auroc_macro": MulticlassAUROC(k, average="macro"),
            "auroc": MulticlassAUROC(k, average="none"),
            "f1_macro": MulticlassF1Score(k, average="macro"),
        },
        prefix=prefix,
    )


class ClassifierModule(L.LightningModule):
    """Classification with class-weighted cross-entropy, AdamW groups and a per-batch warm-up + cosine schedule.

    Args:
        model_name: registered model name (``popevit.models``).
        model_kwargs: keyword arguments for ``create_model``.
        classes: class names in output order.
        optim: ``OptimConfig`` as a dict.
        class_weights: one weight per class for the loss, or ``None`` for unweighted.
        seed: base seed; every epoch reseeds the global RNGs with ``seed + epoch`` so a resumed run repeats the
            augmentation and dropout draws of an uninterrupted one.
    """

    def __init__(
        self,
        model_name: str,
        model_kwargs: dict[str, Any],
        classes: list[str],
        optim: dict[str, Any],
        class_weights: list[float] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = create_model(model_name, **model_kwargs)
        self.classes = list(classes)
        self.optim_cfg = OptimConfig.model_validate(optim)
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weights, persistent=False)
        k = len(classes)
        self.train_metrics = stage_metrics(k, "train/")
        self.val_metrics = stage_metrics(k, "val/")
        self.test_metrics = stage_metrics(k, "test/")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(
            logits.float(), y, weight=self.class_weights, label_smoothing=self.optim_cfg.label_smoothing
        )

    def on_train_epoch_start(self) -> None:
        s = self.hparams.seed * 100_003 + self.current_epoch
        torch.manual_seed(s)
        np.random.seed(s % 2**32)
        random.seed(s)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = self._loss(logits, y)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at epoch {self.current_epoch}, batch {batch_idx}; "
                "the last good checkpoint is kept. Lower optim.lr, enable optim.grad_clip, or use precision 32."
            )
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.train_metrics.update(logits.detach().float().softmax(-1), y)
        return loss

    def _eval_step(self, batch: tuple[torch.Tensor, torch.Tensor], metrics: MetricCollection, stage: str) -> None:
        x, y = batch[0], batch[1]
        logits = self(x)
        self.log(
            f"{stage}/loss",
            self._loss(logits, y),
            on_epoch=True,
            prog_bar=stage == "val",
            batch_size=len(y),
            sync_dist=True,
        )
        metrics.update(logits.float().softmax(-1), y)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def _log_epoch(self, metrics: MetricCollection) -> None:
        # torchmetrics syncs states across DDP ranks inside compute(), so every rank logs the same numbers.
        values = metrics.compute()
        for name, value in values.items():
            if value.ndim == 0:
                self.log(name, value, prog_bar=name.endswith(("acc", "auroc_macro")))
            else:
                stage = name.split("/")[0]
                for cls, v in zip(self.classes, value, strict=True):
                    self.log(f"{stage}/auroc_{cls}", v)
        metrics.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch(self.train_metrics)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch(self.val_metrics)

    def on_test_epoch_end(self) -> None:
        self._log_epoch(self.test_metrics)

    def configure_optimizers(self) -> dict[str, Any]:
        cfg = self.optim_cfg
        optimizer = build_optimizer(self.model, cfg)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        per_epoch = total / max(1, self.trainer.max_epochs)
        warmup = round(cfg.warmup_epochs * per_epoch)
        fn = partial(
            warmup_cosine,
            total_steps=total,
            warmup_steps=warmup,
            min_ratio=cfg.min_lr_ratio,
            cosine=cfg.schedule == "cosine",
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
