"""``popevit pretrain``: SimMIM pretraining of a popevit ViT on the training images of a duplicate-grouped split.

Only the ``train`` rows of the run's manifest are used for the reconstruction loss (labels are ignored); the
``val`` rows give a held-out reconstruction loss with a fixed mask per batch, which selects the best checkpoint.
The test rows are never read. The run folder mirrors ``popevit train``'s: config.yaml, manifest.csv, checkpoints/,
logs/, and at the end ``encoder.safetensors`` (the backbone without its heads, for ``popevit train --init``) and
``pretrain.json`` (wall time, epochs, images seen, best validation loss, device).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor
from safetensors.torch import save_file

from popevit.config import ExperimentConfig, OptimConfig
from popevit.io import atomic_write_bytes, atomic_write_json
from popevit.models import create_model
from popevit.models.presets import FORMER_NAMES, PRESETS
from popevit.pretrain.simmim import SimMIM, random_mask
from popevit.training.fit import best_checkpoint, device_precision, fit_and_load_best, launcher_rank, make_trainer
from popevit.training.module import NonFiniteLossError, configure_warmup_cosine, reseed_epoch
from popevit.training.provenance import provenance
from popevit.training.run import model_kwargs
from popevit.training.rundir import check_out_dir, prepare_run_dir, report_data, run_data


class MIMModule(L.LightningModule):
    """SimMIM as a LightningModule: random masks in training, fixed per-batch masks in validation.

    Args:
        model_name: a registered popevit ViT (``vit_*``).
        model_kwargs: keyword arguments for ``create_model``.
        optim: ``OptimConfig`` as a dict.
        mask_ratio: fraction of the patches hidden per image.
        seed: base seed; every epoch reseeds the RNGs from (seed, epoch), as in classification.
    """

    def __init__(
        self, model_name: str, model_kwargs: dict[str, Any], optim: dict[str, Any], mask_ratio: float, seed: int = 0
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = SimMIM(create_model(model_name, **model_kwargs))
        self.optim_cfg = OptimConfig.model_validate(optim)

    def _mask(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        gh, gw = self.net.encoder.grid_size(tuple(x.shape[-2:]))
        return random_mask(len(x), gh * gw, self.hparams.mask_ratio, generator).to(x.device)

    def on_train_epoch_start(self) -> None:
        reseed_epoch(self.hparams.seed, self.current_epoch, self.global_rank)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x = batch[0]
        loss = self.net(x, self._mask(x))
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite reconstruction loss ({loss.item()}) at epoch {self.current_epoch}, batch {batch_idx}; "
                "the last good checkpoint is kept. Lower optim.lr or enable optim.grad_clip."
            )
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x = batch[0]
        mask = self._mask(x, torch.Generator().manual_seed(batch_idx))  # the same masks every epoch
        self.log("val/loss", self.net(x, mask), on_epoch=True, prog_bar=True, batch_size=len(x), sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_warmup_cosine(self, self.net, self.optim_cfg)


@dataclass
class PretrainResult:
    out_dir: Path
    encoder: Path
    best_val_loss: float
    wall_s: float
    epochs: int


def pretrain(cfg: ExperimentConfig, out_dir: str | Path, *, resume: bool = False) -> PretrainResult:
    """Pretrain ``cfg.model`` with ``cfg.pretrain`` on the training split; write ``out_dir/encoder.safetensors``.

    Args:
        cfg: validated experiment config (``model``, ``data``, ``optim``, ``train`` and ``pretrain`` sections).
        out_dir: run directory; must not hold a run unless ``resume``.
        resume: continue from ``out_dir/checkpoints/last.ckpt``.

    Returns:
        The run folder, the encoder weights' path, the best validation reconstruction loss, wall time and epochs.
    """
    if FORMER_NAMES.get(cfg.model.name, cfg.model.name) not in PRESETS:
        raise ValueError(
            f"SimMIM pretrains popevit's ViT presets ({', '.join(PRESETS)}), got model.name={cfg.model.name!r}; "
            "choose one of them"
        )
    if cfg.data.dataset != "folder":
        raise ValueError("popevit pretrain reads image folders or manifests (data.dataset=folder), not CIFAR")
    unused = {
        "model.distill": cfg.model.distill is not None,
        "model.freeze_backbone": cfg.model.freeze_backbone,
        "model.pretrained": cfg.model.pretrained is not None,
        "data.augment.mixup/cutmix": cfg.data.augment.mixing,
        "train.ema_decay": cfg.train.ema_decay is not None,
        "optim.layer_decay": cfg.optim.layer_decay is not None,
    }
    if any(unused.values()):
        names = ", ".join(k for k, v in unused.items() if v)
        raise ValueError(f"{names}: fine-tuning options that pretraining does not use; remove them from its config")
    out_dir = Path(out_dir)
    if launcher_rank() == 0:  # everything is checked before the run folder is made
        check_out_dir(out_dir, resume, cfg)
    resume = resume and (out_dir / "checkpoints" / "last.ckpt").is_file()  # no checkpoint yet: start over
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    dm, source, skipped = run_data(cfg, out_dir, resume)
    kwargs = model_kwargs(cfg, len(dm.classes))
    module = MIMModule(
        cfg.model.name, kwargs, cfg.optim.model_dump(mode="json"), cfg.pretrain.mask_ratio, cfg.train.seed
    )
    on_gpu, precision = device_precision(cfg)
    ckpt_best = best_checkpoint(out_dir, "val/loss", "min")
    callbacks = [ckpt_best, LearningRateMonitor(logging_interval="epoch")]
    if cfg.train.patience is not None:
        callbacks.append(EarlyStopping(monitor="val/loss", mode="min", patience=cfg.train.patience))
    trainer = make_trainer(cfg, out_dir, callbacks, precision)
    manifest = prepare_run_dir(cfg, out_dir, resume, source, skipped)
    if launcher_rank() == 0:
        report_data(dm, skipped, out_dir)
    fit = fit_and_load_best(cfg, trainer, module, dm, ckpt_best, out_dir, resume)
    encoder = out_dir / "encoder.safetensors"
    if fit.best is None:  # rank 0 alone writes the encoder
        return PretrainResult(out_dir, encoder, float("nan"), fit.wall_s, trainer.current_epoch)
    best_loss = float(ckpt_best.best_model_score) if ckpt_best.best_model_score is not None else float("nan")
    state = {k: v.detach().cpu().contiguous() for k, v in module.net.encoder_state_dict().items()}
    atomic_write_bytes(encoder, lambda tmp: save_file(state, str(tmp)))
    atomic_write_json(
        out_dir / "pretrain.json",
        {
            **provenance(fit, trainer, manifest, on_gpu, precision, resume),
            "method": cfg.pretrain.method,
            "mask_ratio": cfg.pretrain.mask_ratio,
            "model": cfg.model.name,
            "model_kwargs": kwargs,
            "train_images": len(dm.datasets["train"]),
            "steps": trainer.global_step,
            "batch_size": cfg.data.batch_size,
            "best_val_loss": best_loss,
        },
    )
    return PretrainResult(out_dir, encoder, best_loss, fit.wall_s, trainer.current_epoch)
