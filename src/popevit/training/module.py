"""LightningModule for the seed recipe. It wraps the plain model; it does not own it.

The module is built from config primitives (model name + kwargs, class list, optimizer settings, class weights),
saved as hyper-parameters, so a checkpoint rebuilds itself and ``popevit.artifact`` rebuilds the plain model
without Lightning.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryAUROC, MulticlassAccuracy, MulticlassAUROC, MulticlassF1Score

from popevit.config import AugmentConfig, DistillConfig, OptimConfig, PreprocessConfig
from popevit.models import create_model
from popevit.training.optim import build_optimizer, warmup_cosine


def _teacher_dir(run_dir: str | Path) -> Path:
    run_dir = Path(run_dir)
    if not (run_dir / "model.json").is_file():
        raise FileNotFoundError(
            f"distillation teacher {str(run_dir)!r} is not a finished run folder (no model.json); train the teacher "
            "first (e.g. `popevit train --config configs/experiments/resnet18_128px.yaml ...`) and pass its run folder"
        )
    return run_dir


def load_teacher(run_dir: str | Path, classes: list[str], student_kwargs: dict[str, Any]) -> torch.nn.Module:
    """A frozen teacher from a run folder, checked against the student's classes and input format."""
    from popevit.artifact import load_artifact

    run_dir = _teacher_dir(run_dir)
    teacher, meta = load_artifact(run_dir)
    if list(meta.classes) != list(classes):
        raise ValueError(
            f"the teacher {str(run_dir)!r} predicts {list(meta.classes)} but the student {list(classes)}; "
            "train the teacher on the same task (classes, binary) and split"
        )
    for key in ("in_chans", "img_size"):
        want, got = student_kwargs.get(key), getattr(meta.preprocess, key)
        if want is not None and want != got:
            raise ValueError(
                f"the teacher {str(run_dir)!r} was trained with {key}={got} but the student uses {key}={want}; "
                "both see the same batch, so train the teacher with the student's data.preprocess settings"
            )
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def check_teacher_preprocess(run_dir: str | Path, preprocess: PreprocessConfig) -> None:
    """Refuse a teacher trained on differently preprocessed images: it is fed the student's batches as they are."""
    from popevit.artifact import load_meta

    theirs, ours = load_meta(_teacher_dir(run_dir)).preprocess.model_dump(), preprocess.model_dump()
    differ = [k for k in ours if theirs.get(k) != ours[k]]
    if differ:
        raise ValueError(
            f"the teacher {str(run_dir)!r} was trained with data.preprocess "
            + ", ".join(f"{k}={theirs.get(k)!r}" for k in differ)
            + " but the student uses "
            + ", ".join(f"{k}={ours[k]!r}" for k in differ)
            + "; both see the same batch, so train the teacher with the student's data.preprocess settings"
        )


def reseed_epoch(seed: int, epoch: int, rank: int = 0) -> None:
    """Reseed torch, numpy and random from (seed, epoch, rank) at the start of every epoch, so that a resumed run
    repeats the augmentation, mixing, masking and dropout draws of an uninterrupted one, and DDP ranks draw
    different ones."""
    s = seed * 100_003 + epoch + rank * 1_000_003
    torch.manual_seed(s)
    np.random.seed(s % 2**32)
    random.seed(s)


def configure_warmup_cosine(module: L.LightningModule, model: torch.nn.Module, cfg: OptimConfig) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer: ``cfg``'s optimizer over ``model`` and the per-batch linear
    warm-up + cosine schedule, sized from the trainer's estimated number of steps, and with
    ``cfg.schedule_clock == "time"`` also run by the share of the wall-clock budget used (:func:`budget_share`)."""
    optimizer = build_optimizer(model, cfg)
    total = max(1, int(module.trainer.estimated_stepping_batches))
    per_epoch = total / max(1, module.trainer.max_epochs)
    schedule = partial(
        warmup_cosine,
        total_steps=total,
        warmup_steps=round(cfg.warmup_epochs * per_epoch),
        min_ratio=cfg.min_lr_ratio,
        cosine=cfg.schedule == "cosine",
    )
    if cfg.schedule_clock == "time":
        share = budget_share(module.trainer)

        def timed(step: int) -> float:  # a function, so LambdaLR keeps it (and the trainer) out of checkpoints
            return schedule(step, elapsed=share())

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, timed)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def budget_share(trainer: L.Trainer) -> Callable[[], float]:
    """A clock of the share of the ``max_time`` budget used, read from the Lightning ``Timer`` that enforces the cap
    (so it counts validation, and a resumed run goes on from the time its checkpoint recorded). Under DDP every call
    broadcasts rank 0's reading, so that all replicas step with the same learning rate.

    Li et al. (2020, "Budgeted training", arXiv:1905.04753) found that under a fixed budget the schedule must decay
    within the budget ("budgeted convergence"); their budget is counted in iterations, this one in seconds.
    """
    from popevit.training.callbacks import max_time_timer

    timer = max_time_timer(trainer)
    remaining = None if timer is None else timer.time_remaining()
    if remaining is None:
        raise ValueError("optim.schedule_clock=time needs a wall-clock budget; set train.max_minutes")
    duration = timer.time_elapsed() + remaining

    def share() -> float:
        used = timer.time_elapsed() / duration
        return trainer.strategy.broadcast(used, src=0) if trainer.world_size > 1 else used

    return share


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
        distill: ``DistillConfig`` as a dict, or ``None``. The model must then have a distillation token
            (``create_model(..., distill=True)``); the teacher is loaded from its run folder, frozen, and kept out of
            this module's state dict (checkpoints hold the student only).
        mix: ``AugmentConfig`` as a dict when mixup or cutmix is on, else ``None``. Batches are mixed in the training
            step with timm's ``Mixup`` (label smoothing moves into its soft targets); the loss is the class-weighted
            cross-entropy against the mixed targets. An odd-sized batch (a last partial one) is mixed without its
            last image, which keeps its hard label (timm mixes a batch with its own reversal, so it needs pairs).
            The ``train/*`` metrics then score mixed images against their first label: a trend, not an accuracy.
        label_sets: partial labels, each a list of class indices (target ``K + j`` stands for "one of the classes
            ``label_sets[j]``"), e.g. Br35H's ``tumor`` beside the three tumour types of a manifest of several sources
            (``popevit data split --add``). Such an image is trained on the probability of its set, ``-log sum_{c in
            S} p_c``: for ``tumor``, the tumour-vs-no-tumour marginal ``1 - p_notumor`` only, never a tumour type it
            does not have. Class weights and label smoothing apply to full labels as in torch's cross-entropy; a
            partial label weighs 1. The multi-class metrics use full labels; ``val/tumor_auroc`` uses every image.
    """

    def __init__(
        self,
        model_name: str,
        model_kwargs: dict[str, Any],
        classes: list[str],
        optim: dict[str, Any],
        class_weights: list[float] | None = None,
        seed: int = 0,
        distill: dict[str, Any] | None = None,
        mix: dict[str, Any] | None = None,
        label_sets: list[list[int]] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if label_sets and mix is not None:
            raise ValueError(
                "mixup/cutmix mix the targets of two images, which a partial label (e.g. Br35H's 'tumor') does not "
                "have; set data.augment.mixup=0 and data.augment.cutmix=0 with a manifest of several sources"
            )
        self.model = create_model(model_name, **model_kwargs)
        self.classes = list(classes)
        self.optim_cfg = OptimConfig.model_validate(optim)
        weights = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weights", weights, persistent=False)
        k = len(classes)
        self.partial = bool(label_sets)
        allowed = torch.eye(k, dtype=torch.bool)  # (K + J, K): row t = the classes target t allows
        if label_sets:
            sets = torch.zeros(len(label_sets), k, dtype=torch.bool)
            for j, members in enumerate(label_sets):
                sets[j, members] = True
            allowed = torch.cat([allowed, sets])
        self.register_buffer("allowed", allowed, persistent=False)
        self.notumor = self.classes.index("notumor") if "notumor" in self.classes and self.partial else None
        self.val_tumor_auroc = BinaryAUROC() if self.notumor is not None else None
        self.train_metrics = stage_metrics(k, "train/")
        self.val_metrics = stage_metrics(k, "val/")
        self.test_metrics = stage_metrics(k, "test/")
        self.distill_cfg = DistillConfig.model_validate(distill) if distill is not None else None
        self._teacher: list[torch.nn.Module] = []  # a list hides it from state_dict, parameters() and the optimizer
        if self.distill_cfg is not None:
            self._teacher.append(load_teacher(self.distill_cfg.teacher, self.classes, model_kwargs))
        self.mixer = None
        if mix is not None:
            from timm.data import Mixup

            aug = AugmentConfig.model_validate(mix)
            self.mixer = Mixup(
                mixup_alpha=aug.mixup,
                cutmix_alpha=aug.cutmix,
                prob=aug.mix_prob,
                switch_prob=aug.mix_switch_prob,
                mode="batch",
                label_smoothing=self.optim_cfg.label_smoothing,
                num_classes=k,
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Class-weighted cross-entropy to class indices (with label smoothing) or to (B, K) soft targets (mixed).

        Soft targets ``y`` are the mixed targets smoothed by ``eps`` (timm's ``Mixup``). The loss is normalised like
        torch's weighted mean for indices, ``sum_i sum_c w_c y_ic (-log p_ic) / sum_i sum_c w_c m_ic`` with ``m`` the
        unsmoothed mixture ``(y - eps / K) / (1 - eps)``, so a (smoothed) one-hot target gives exactly torch's
        hard-label loss, smoothing included. Torch's own soft-target mode divides by the batch size instead, which
        would change the loss scale whenever mixing is switched on.
        """
        eps = self.optim_cfg.label_smoothing
        if y.ndim == 1 and self.partial:
            return self._partial_loss(logits, y)
        if y.ndim == 1:
            return F.cross_entropy(logits.float(), y, weight=self.class_weights, label_smoothing=eps)
        y = y.float()
        w = torch.ones_like(y[0]) if self.class_weights is None else self.class_weights
        mixture = (y - eps / y.shape[-1]) / (1 - eps)
        return -(y * w * logits.float().log_softmax(-1)).sum() / (mixture * w).sum()

    def _partial_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy to the probability of each image's allowed set of classes (one class for a full label).

        ``sum_i [(1 - eps) w_i (-log sum_{c in S_i} p_ic) + eps sum_c w_c (-log p_ic) / K] / sum_i w_i``, with ``w_i``
        the class weight of a full label and 1 for a partial one: for full labels exactly torch's weighted,
        smoothed cross-entropy.
        """
        k = logits.shape[-1]
        logp = logits.float().log_softmax(-1)  # (B, K)
        nll = -logp.masked_fill(~self.allowed[y], float("-inf")).logsumexp(-1)  # (B,)
        w_cls = torch.ones(k, device=logits.device) if self.class_weights is None else self.class_weights
        w = torch.where(y < k, w_cls[y.clamp(max=k - 1)], torch.ones_like(nll))  # (B,)
        eps = self.optim_cfg.label_smoothing
        smooth = -(logp * w_cls).sum(-1) / k  # (B,)
        return ((1 - eps) * w * nll + eps * smooth).sum() / w.sum()

    def _update(self, metrics: MetricCollection, logits: torch.Tensor, y: torch.Tensor) -> None:
        """Multi-class metrics on the images with a full label (partial labels have no single class)."""
        p = logits.detach().float().softmax(-1)
        full = y < p.shape[-1]
        if self.partial and not bool(full.all()):
            p, y = p[full], y[full]
        if len(y):
            metrics.update(p, y)

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixup/cutmix a training batch: (B, C, H, W), (B,) -> mixed images and (B, K) soft targets."""
        n = len(y) - len(y) % 2
        xm, ym = self.mixer(x[:n].clone(), y[:n])
        if n < len(y):  # the unpaired last image keeps its (smoothed) hard label
            eps = self.optim_cfg.label_smoothing
            last = F.one_hot(y[n:], len(self.classes)).float() * (1 - eps) + eps / len(self.classes)
            xm, ym = torch.cat([xm, x[n:]]), torch.cat([ym.to(last), last])
        return xm, ym

    def distill_loss(self, dist_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        """DeiT's distillation objective on the distillation head: hard (CE to the teacher's arg-max, with the class
        weights) or soft (``tau^2 * KL(teacher || student)`` at temperature ``tau``, Hinton et al. 2015)."""
        cfg = self.distill_cfg
        if cfg.mode == "hard":
            return self._loss(dist_logits, teacher_logits.argmax(-1))
        t = cfg.tau
        return F.kl_div(
            F.log_softmax(dist_logits.float() / t, -1),
            F.log_softmax(teacher_logits.float() / t, -1),
            reduction="batchmean",
            log_target=True,
        ) * (t * t)

    def on_train_epoch_start(self) -> None:
        reseed_epoch(self.hparams.seed, self.current_epoch, self.global_rank)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        target = y
        if self.mixer is not None and len(y) > 1:
            x, target = self.mix(x, y)
        out = self(x)
        if self.distill_cfg is not None:
            logits, dist = out
            teacher = self._teacher[0].to(x.device).eval()
            with torch.no_grad():
                t_logits = teacher(x)
            a = self.distill_cfg.alpha
            loss = (1 - a) * self._loss(logits, target) + a * self.distill_loss(dist, t_logits)
            logits = (logits + dist) / 2  # the prediction the metrics (and inference) use
        else:
            logits = out
            loss = self._loss(logits, target)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss ({loss.item()}) at epoch {self.current_epoch}, batch {batch_idx}; "
                "the last good checkpoint is kept. Lower optim.lr, enable optim.grad_clip, or use precision 32."
            )
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        self._update(self.train_metrics, logits, y)
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
        self._update(metrics, logits, y)
        if stage == "val" and self.val_tumor_auroc is not None:  # every image: full and partial labels
            p_tumor = 1.0 - logits.float().softmax(-1)[:, self.notumor]
            self.val_tumor_auroc.update(p_tumor, (~self.allowed[y][:, self.notumor]).long())

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
        if self.val_tumor_auroc is not None:
            self.log("val/tumor_auroc", self.val_tumor_auroc.compute())
            self.val_tumor_auroc.reset()

    def on_test_epoch_end(self) -> None:
        self._log_epoch(self.test_metrics)

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_warmup_cosine(self, self.model, self.optim_cfg)
