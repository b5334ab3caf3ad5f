"""``popevit train``: one experiment config -> one run folder (:mod:`popevit.training.rundir` describes it).

:func:`train` reads like the steps of a run: check everything, build the data, the model and the Trainer, fill the
run folder, fit, save the artefact and the records. Each step lives in its own module: the run folder and its checks
in :mod:`~popevit.training.rundir`, the Trainer and the fit in :mod:`~popevit.training.fit`, the resumed history in
:mod:`~popevit.training.history`, the run's provenance in :mod:`~popevit.training.provenance` and the compute of the
stages it was built on in :mod:`~popevit.training.budget`. Lightning and the LightningModule are heavy imports, made
inside :func:`train` so that ``popevit --help`` does not pay for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from popevit.artifact import ModelMeta, load_weights, save_artifact
from popevit.config import ExperimentConfig, load_config
from popevit.io import atomic_write_json
from popevit.models import is_vit
from popevit.serve.card import write_model_card
from popevit.training.budget import budget
from popevit.training.fit import best_checkpoint, device_precision, fit_and_load_best, launcher_rank, make_trainer
from popevit.training.provenance import provenance
from popevit.training.rundir import check_out_dir, prepare_run_dir, record_init, report_data, run_data


@dataclass
class RunResult:
    """What :func:`train` returns: the run folder, classes, best validation metrics, wall time and epochs."""

    out_dir: Path
    classes: list[str]
    val_metrics: dict[str, float]
    wall_s: float
    epochs: int


def model_kwargs(cfg: ExperimentConfig, num_classes: int) -> dict[str, Any]:
    """Keyword arguments for ``create_model`` from a config (pos_enc only for ViT-family models)."""
    m = cfg.model
    kw: dict[str, Any] = {
        "num_classes": num_classes,
        "in_chans": cfg.data.preprocess.in_chans,
        "img_size": cfg.data.preprocess.img_size,
    }
    if is_vit(m.name):
        kw["pos_enc"] = m.pos_enc
    for key in ("patch_size", "pool", "stem", "embed_dim", "depth", "num_heads", "mlp_dim"):
        if getattr(m, key) is not None:
            kw[key] = getattr(m, key)
    for key in ("dropout", "attn_dropout", "drop_path"):
        if getattr(m, key):
            kw[key] = getattr(m, key)
    if m.fc_norm:
        kw["fc_norm"] = True
    if m.freeze_backbone:
        kw["freeze_backbone"] = True
    if m.distill is not None:
        kw["distill"] = True
    return kw


def train(
    cfg: ExperimentConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    init: str | Path | None = None,
    callbacks: list[Any] | None = None,
) -> RunResult:
    """Train one experiment into ``out_dir``.

    Args:
        cfg: validated experiment config.
        out_dir: run directory; must not hold a run unless ``resume``.
        resume: continue from ``out_dir/checkpoints/last.ckpt`` (optimizer, scheduler, early stopping, epoch).
        init: optional ``model.safetensors`` to initialise the weights from (fine-tuning).
        callbacks: more Lightning callbacks, e.g. one that reports progress to another process.

    Returns:
        The run's directory, classes, best validation metrics, wall time and epochs run.
    """
    import lightning as L

    # Everything is checked before the run folder is made, so that a mistake leaves no half-made run behind and the
    # corrected command is not refused: the folder, the config, the data (read, split, decoded), the model, the
    # --init weights and the devices.
    out_dir, rank0 = Path(out_dir), launcher_rank() == 0
    if rank0:
        check_out_dir(out_dir, resume, cfg, init)
    resume = resume and (out_dir / "checkpoints" / "last.ckpt").is_file()  # no checkpoint yet: start over
    _check_inputs(cfg, init)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    dm, manifest, skipped = run_data(cfg, out_dir, resume)
    module, kwargs = _build_module(cfg, dm)
    if init is not None and not resume:
        _load_init(module.model, Path(init))
    on_gpu, precision = device_precision(cfg)
    ckpt_best = best_checkpoint(out_dir, cfg.train.monitor, "min" if cfg.train.monitor == "val/loss" else "max")
    trainer = make_trainer(cfg, out_dir, [*_callbacks(cfg, out_dir, ckpt_best), *(callbacks or [])], precision)

    # Checked: now the run folder.
    manifest_path = prepare_run_dir(cfg, out_dir, resume, manifest, skipped)
    if rank0:
        init = record_init(out_dir, None if init is None else Path(init), resume)
        report_data(dm, skipped, out_dir)
    fit = fit_and_load_best(cfg, trainer, module, dm, ckpt_best, out_dir, resume)
    classes, cifar = list(dm.classes), cfg.data.dataset != "folder"
    if fit.best is None:  # not rank 0: rank 0 alone writes the outputs
        return RunResult(out_dir, classes, {}, fit.wall_s, trainer.current_epoch)
    save_artifact(module.model, _meta(cfg, kwargs, dm, fit.best), out_dir)
    val = _validate(module, dm, on_gpu, precision, cfg.train.accelerator)
    atomic_write_json(out_dir / "val_metrics.json", val)
    teacher = cfg.model.distill.teacher if cfg.model.distill else None
    atomic_write_json(
        out_dir / "run.json",
        {
            **provenance(fit, trainer, None if cifar else manifest_path, on_gpu, precision, resume),
            **budget(fit.wall_s, teacher, init),
            "classes": classes,
            "data_stats": getattr(dm, "stats", None) if cifar else None,
        },
    )
    write_model_card(out_dir)
    return RunResult(out_dir, classes, val, fit.wall_s, trainer.current_epoch)


def _check_inputs(cfg: ExperimentConfig, init: str | Path | None) -> None:
    """Refuse a distillation teacher with other preprocessing and missing ``--init`` weights, before any work."""
    from popevit.training.module import check_teacher_preprocess  # heavy import: Lightning

    if cfg.model.distill is not None:
        check_teacher_preprocess(cfg.model.distill.teacher, cfg.data.preprocess)
    if init is not None and not Path(init).is_file():
        raise FileNotFoundError(
            f"--init weights {str(init)!r} not found; pass the model.safetensors of a popevit train run or the "
            "encoder.safetensors of a popevit pretrain run"
        )


def _build_module(cfg: ExperimentConfig, dm: Any) -> tuple[Any, dict[str, Any]]:
    """The LightningModule of a run, built from config primitives, and the model's ``create_model`` keywords."""
    from popevit.training.module import ClassifierModule  # heavy import: Lightning

    kwargs = model_kwargs(cfg, len(dm.classes))
    module = ClassifierModule(
        cfg.model.name,
        {**kwargs, "pretrained": str(cfg.model.pretrained) if cfg.model.pretrained else None},
        list(dm.classes),
        cfg.optim.model_dump(mode="json"),
        dm.class_weights.tolist() if cfg.optim.class_weighted else None,
        cfg.train.seed,
        cfg.model.distill.model_dump(mode="json") if cfg.model.distill else None,
        cfg.data.augment.model_dump(mode="json") if cfg.data.augment.mixing else None,
        label_sets=getattr(dm, "label_sets", None) or None,
    )
    if cfg.train.channels_last:  # the parameters keep their identity; only their memory layout changes
        module.model.to(memory_format=torch.channels_last)
    return module, kwargs


def _callbacks(cfg: ExperimentConfig, out_dir: Path, ckpt_best: Any) -> list[Any]:
    """The run's callbacks besides :func:`~popevit.training.fit.make_trainer`'s: the best checkpoint, the learning
    rate, per-rank metrics, early stopping and EMA as configured."""
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor  # heavy import: Lightning

    from popevit.training.callbacks import RankMetricsRecorder, ema_callback  # heavy import: Lightning

    callbacks: list[Any] = [ckpt_best, LearningRateMonitor(logging_interval="epoch"), RankMetricsRecorder(out_dir)]
    if cfg.train.patience is not None:
        callbacks.append(EarlyStopping(monitor=cfg.train.monitor, mode=ckpt_best.mode, patience=cfg.train.patience))
    if cfg.train.ema_decay is not None:
        # Validation (hence early stopping and the best checkpoint) sees the averaged weights; the saved checkpoints
        # hold them as their state_dict (the raw weights ride along for --resume), so the artefact is the EMA model.
        callbacks.append(ema_callback(cfg.train.ema_decay, warmup=cfg.train.ema_warmup))
    return callbacks


def _meta(cfg: ExperimentConfig, kwargs: dict[str, Any], dm: Any, best: dict[str, Any]) -> ModelMeta:
    """The artefact's ``model.json``: the model, classes, preprocessing, best epoch and dataset."""
    extra = {"best_epoch": best.get("epoch"), "dataset": cfg.data.dataset}
    if cfg.data.dataset != "folder":  # CIFAR is normalised with training-set channel statistics, not per image
        extra["channel_stats"] = {k: dm.stats.get(k) for k in ("mean", "std")}
    return ModelMeta(cfg.model.name, kwargs, list(dm.classes), cfg.data.preprocess, extra=extra)


def _validate(module: Any, dm: Any, on_gpu: bool, precision: str, accelerator: str) -> dict[str, float]:
    """Validation metrics of the loaded best weights, on one device."""
    import lightning as L  # heavy import

    val_trainer = L.Trainer(
        accelerator="cpu" if not on_gpu else accelerator,
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        precision=precision,
    )
    return {k: float(v) for k, v in val_trainer.validate(module, datamodule=dm, verbose=False)[0].items()}


def _load_init(model: torch.nn.Module, path: Path) -> None:
    """Load the tensors of ``path`` that fit ``model`` (fine-tuning from a run or a pretraining), saying which."""
    state = load_weights(path)
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(
            f"--init {str(path)!r}: none of its {len(state)} tensors fits {type(model).__name__} (names or shapes "
            "differ); initialise from weights of the same model.name and width, e.g. popevit pretrain with this config"
        )
    missing, _ = model.load_state_dict(usable, strict=False)
    skipped = sorted(set(state) - set(usable))
    print(
        f"--init {path}: loaded {len(usable)} tensors; not loaded (absent or shape differs): {skipped[:8]}; "
        f"left at initialisation: {missing[:8]}"
    )


def train_from_files(
    config: str | Path | None,
    overrides: list[str],
    out: str | Path | None,
    resume: bool = False,
    init: str | Path | None = None,
) -> RunResult:
    """Load config + overrides, then :func:`train`. The default run folder is ``runs/<config name>``; ``--resume``
    without a config continues with the run's own ``config.yaml``."""
    if config is None and resume and out is not None and (Path(out) / "config.yaml").is_file():
        config = Path(out) / "config.yaml"
    cfg = load_config(config, overrides)
    out_dir = Path(out) if out is not None else Path("runs") / cfg.name
    return train(cfg, out_dir, resume=resume, init=init)
