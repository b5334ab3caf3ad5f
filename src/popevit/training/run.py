"""``popevit train``: one experiment config -> one run directory.

A run directory holds everything needed to audit and reuse the run::

    runs/NAME/
      config.yaml            the resolved config (YAML + --set overrides)
      init.json              the --init weights it started from (path, sha256), or none; --resume keeps them
      run.json               popevit version, git commit, classes, manifest sha256, wall time, epochs, images
                             seen, whether train.max_minutes ended it, the lr it ended at, device and CPU model,
                             and the compute of the stages it was built on (distillation teacher, --init weights)
      manifest.csv           the exact split used (copied, or made from --data with the duplicate-grouped splitter)
      checkpoints/last.ckpt  written atomically at every validation, i.e. epoch end (resume point)
      checkpoints/best.ckpt  best validation checkpoint
      logs/csv/metrics.csv   epoch-level metrics (Lightning CSVLogger); logs/tb/ for TensorBoard
      model.safetensors      best weights, portable (with model.json: name, kwargs, classes, preprocessing)
      val_metrics.json       validation metrics of the best checkpoint
"""

from __future__ import annotations

import csv
import difflib
import json
import os
import shutil
import subprocess
import time
import warnings
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import yaml

from popevit import __version__
from popevit.artifact import ModelMeta, atomic_write_bytes, file_sha256, save_artifact
from popevit.config import ConfigError, ExperimentConfig, dump_config, load_config


class RunDirError(RuntimeError):
    """The output folder cannot be used as asked (exists without --resume, config changed on resume, ...)."""


@dataclass
class RunResult:
    out_dir: Path
    classes: list[str]
    val_metrics: dict[str, float]
    wall_s: float
    epochs: int


_HEAD: list[str] = []  # the commit, once read: the imported code does not change within a process


def _git_commit() -> str | None:
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


def model_kwargs(cfg: ExperimentConfig, num_classes: int) -> dict[str, Any]:
    """Keyword arguments for ``create_model`` from a config (pos_enc only for ViT-family models)."""
    from popevit.models import is_vit

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
    if m.freeze_backbone:
        kw["freeze_backbone"] = True
    if m.distill is not None:
        kw["distill"] = True
    return kw


def prepare_manifest(cfg: ExperimentConfig, out_dir: Path) -> Path:
    """Copy the given manifest into the run, or make a duplicate-grouped split of ``cfg.data.data`` there."""
    from popevit.data import make_split
    from popevit.data.cache import default_cache_dir

    dest = out_dir / "manifest.csv"
    d = cfg.data
    if d.manifest is not None:
        if not Path(d.manifest).is_file():
            raise FileNotFoundError(f"manifest {str(d.manifest)!r} not found; make one with `popevit data split DATA`")
        if Path(d.manifest).resolve() != dest.resolve():
            shutil.copyfile(d.manifest, dest)
        return dest
    if d.data is None:
        from popevit.data.location import NO_DATA

        raise ValueError(NO_DATA)
    if not Path(d.data).is_dir():
        raise FileNotFoundError(f"data folder {str(d.data)!r} not found; pass --data with the Kaggle Training folder")
    make_split(
        Path(d.data),
        dest,
        seed=d.split_seed,
        ratios=d.ratios,
        class_map=d.class_map,
        classes=d.classes,
        binary=d.binary,
        cache_dir=default_cache_dir(d.cache_dir),
    )
    return dest


def _check_resume(cfg: ExperimentConfig, out_dir: Path) -> None:
    """Refuse ``--resume`` with a config other than the run's. Both are compared as validated configs, so a key that
    popevit gained after the run started (saved config without it, i.e. at its default) is not a change."""
    saved_path = out_dir / "config.yaml"
    requested = dump_config(cfg)
    try:
        saved = dump_config(load_config(saved_path))
    except (ConfigError, yaml.YAMLError):  # e.g. a key popevit has since dropped: show the file as it is
        saved = saved_path.read_text()
    if saved != requested:
        diff = "".join(difflib.unified_diff(saved.splitlines(True), requested.splitlines(True), "saved", "requested"))
        raise RunDirError(
            f"--resume refused: the config differs from the one {str(out_dir)!r} was started with:\n{diff}\n"
            "Resume with the same config, or start a new run with another --out."
        )


def launcher_rank() -> int:
    """Global rank as set by Lightning's DDP launcher, torchrun or SLURM before any process group exists."""
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ and (var != "SLURM_PROCID" or int(os.environ.get("SLURM_NTASKS", "1")) > 1):
            return int(os.environ[var])
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")))
    return node * 1000 + int(os.environ.get("LOCAL_RANK", "0"))


def _wait_for(*paths: Path, timeout_s: float = 600.0) -> Path:
    deadline = time.monotonic() + timeout_s
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            raise RunDirError(
                f"rank {launcher_rank()}: rank 0 did not write {[str(p) for p in paths]} in {timeout_s} s"
            )
        time.sleep(0.5)
    return paths[-1]


def prepare_run_dir(cfg: ExperimentConfig, out_dir: Path, resume: bool) -> Path:
    """Check and fill a run folder (config.yaml, manifest.csv) on rank 0; other ranks wait for rank 0's files.

    Returns:
        The run's manifest (``out_dir/manifest.csv``; for CIFAR a path that is not used).
    """
    cfg_text = dump_config(cfg)
    cifar = cfg.data.dataset != "folder"
    _git_commit()  # the code this run imported, recorded at the end in run.json
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if launcher_rank() != 0:
        # Other ranks (Lightning's DDP children, torchrun, SLURM) read what rank 0 wrote on the shared filesystem.
        return _wait_for(out_dir / "config.yaml", *([] if cifar else [out_dir / "manifest.csv"]))
    last = out_dir / "checkpoints" / "last.ckpt"
    if resume:
        if not last.is_file():
            raise RunDirError(f"--resume: no checkpoint at {str(last)!r}; start the run without --resume")
        _check_resume(cfg, out_dir)
    elif (out_dir / "config.yaml").exists():
        if not last.is_file():
            raise RunDirError(
                f"{str(out_dir)!r} holds a run that stopped before its first checkpoint (see its logs); delete the "
                "folder to start again, or choose another --out"
            )
        raise RunDirError(f"{str(out_dir)!r} already holds a run; pass --resume to continue it or choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = out_dir / "manifest.csv" if resume or cifar else prepare_manifest(cfg, out_dir)
    if not resume:
        atomic_write_bytes(out_dir / "config.yaml", lambda tmp: Path(tmp).write_text(cfg_text))
    return manifest


def device_precision(cfg: ExperimentConfig) -> tuple[bool, str]:
    """(on a GPU?, Lightning precision): ``precision: auto`` is bf16-mixed on a bf16-capable GPU, else fp32."""
    accelerator = cfg.train.accelerator
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    precision = cfg.train.precision
    if precision == "auto":
        precision = "bf16-mixed" if on_gpu and torch.cuda.is_bf16_supported() else "32"
    return on_gpu, precision


def best_checkpoint(out_dir: Path, monitor: str, mode: str) -> Any:
    """``checkpoints/best.ckpt``, by ``monitor``. (``last.ckpt`` is :func:`make_trainer`'s.)"""
    from lightning.pytorch.callbacks import ModelCheckpoint

    return ModelCheckpoint(
        dirpath=out_dir / "checkpoints",
        filename="best",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        enable_version_counter=False,
    )


def latest_checkpoint(out_dir: Path) -> Any:
    """``checkpoints/last.ckpt`` at every validation, the --resume point. Not the best checkpoint's ``save_last``:
    Lightning rewrites that one only when the best improves, so --resume would replay every epoch since."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    return ModelCheckpoint(
        dirpath=out_dir / "checkpoints", filename="last", monitor=None, save_top_k=1, enable_version_counter=False
    )


def make_trainer(cfg: ExperimentConfig, out_dir: Path, callbacks: list[Any], precision: str) -> Any:
    """The Lightning ``Trainer`` of a run: CSV + TensorBoard logs under ``out_dir/logs``, ``last.ckpt`` at every
    validation, atomic checkpoint and CSV header writes, the config's devices, strategy, clipping and batch limits."""
    import lightning as L
    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.loggers import TensorBoardLogger

    from popevit import progress
    from popevit.training.callbacks import EarlierWallClock, ImagesSeen
    from popevit.training.checkpoint import AtomicCheckpointIO, AtomicCSVLogger

    callbacks = [*callbacks, latest_checkpoint(out_dir), ImagesSeen(), EarlierWallClock()]
    # Lightning's bar only on a terminal, and not under a popevit bar (a sweep's trials): one live display at a time.
    show_bar = cfg.train.progress_bar and progress.enabled() and not progress.active()
    if show_bar:
        callbacks = [*callbacks, TQDMProgressBar(refresh_rate=10)]
    loggers = [
        AtomicCSVLogger(out_dir / "logs", name="csv", version=""),
        TensorBoardLogger(out_dir / "logs", name="tb", version=""),
    ]
    return L.Trainer(
        default_root_dir=out_dir,
        max_epochs=cfg.train.max_epochs,
        max_time=timedelta(minutes=cfg.train.max_minutes) if cfg.train.max_minutes else None,
        accelerator=cfg.train.accelerator,
        devices=cfg.train.devices,
        strategy=cfg.train.strategy,
        num_nodes=cfg.train.num_nodes,
        precision=precision,
        deterministic=cfg.train.deterministic,
        gradient_clip_val=cfg.optim.grad_clip,
        callbacks=callbacks,
        logger=loggers,
        log_every_n_steps=cfg.train.log_every_n_steps,
        limit_train_batches=cfg.train.limit_train_batches,
        limit_val_batches=cfg.train.limit_val_batches,
        enable_progress_bar=show_bar,
        enable_model_summary=False,
        plugins=[AtomicCheckpointIO()],
        num_sanity_val_steps=0,
    )


@dataclass
class FitOutcome:
    """What :func:`fit_and_load_best` leaves: wall time (a resumed run's earlier processes included, ``earlier_s`` of
    it), and on rank 0 the loaded best checkpoint and its path."""

    wall_s: float
    best: dict[str, Any] | None
    best_path: str | None
    earlier_s: float = 0.0


METRICS_CSV = Path("logs") / "csv" / "metrics.csv"


def keep_metrics_history(out_dir: Path, last: Path) -> Path | None:
    """Before a resumed fit: copy the rows of ``logs/csv/metrics.csv`` logged before the step of ``last`` (the
    checkpoint it resumes from) to a side file, because Lightning's CSVLogger deletes the file when it finds it on
    resume (its warning "Previous log files in this directory will be deleted"). Rows that an interrupted process
    logged after its last checkpoint are dropped: those epochs run again. A side file left by an earlier interrupted
    resume is carried over.

    Returns:
        The side file, for :func:`restore_metrics_history` after the fit; None when there is no history.
    """
    side = out_dir / METRICS_CSV.with_name("metrics.before_resume.csv")
    ckpt = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    rows = [*_read_csv_rows(side), *_read_csv_rows(out_dir / METRICS_CSV)]
    rows = [r for r in rows if r.get("step") and int(float(r["step"])) < ckpt["global_step"]]
    if not rows:
        return None
    _write_csv_rows(side, rows)
    return side


def restore_metrics_history(out_dir: Path, side: Path) -> None:
    """After a resumed fit: put the rows :func:`keep_metrics_history` kept back in front of the new ones."""
    _write_csv_rows(out_dir / METRICS_CSV, [*_read_csv_rows(side), *_read_csv_rows(out_dir / METRICS_CSV)])
    side.unlink()


def _read_csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_csv_rows(path: Path, rows: list[dict[str, str]]) -> None:
    header = sorted(set().union(*rows))  # Lightning's CSVLogger sorts its columns too

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write_bytes(path, write)


def fit_and_load_best(
    cfg: ExperimentConfig, trainer: Any, module: Any, dm: Any, ckpt_best: Any, out_dir: Path, resume: bool
) -> FitOutcome:
    """``trainer.fit`` (from ``last.ckpt`` when resuming; out-of-memory names the smaller batch to retry with), then
    tear down DDP and, on rank 0 only, load the best checkpoint (else the last) into ``module``. A resumed run keeps
    the training curves of its earlier processes, and its wall time includes them
    (:class:`~popevit.training.callbacks.EarlierWallClock`)."""
    from popevit.training.callbacks import EarlierWallClock

    last = out_dir / "checkpoints" / "last.ckpt"
    history = keep_metrics_history(out_dir, last) if resume and launcher_rank() == 0 else None
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            if history is not None:  # the "previous log files will be deleted" warning: they are put back below
                warnings.filterwarnings("ignore", message="Experiment logs directory .* is not empty")
            trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None)
    except torch.OutOfMemoryError as err:
        raise RuntimeError(
            f"out of memory with data.batch_size={cfg.data.batch_size}: retry with a smaller batch, e.g. "
            f"--set data.batch_size={max(1, cfg.data.batch_size // 2)}, or a smaller data.preprocess.img_size"
        ) from err
    earlier = sum(c.earlier_s for c in trainer.callbacks if isinstance(c, EarlierWallClock))
    wall = time.perf_counter() - t0 + earlier
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Training is over; rank 0 alone writes the outputs (and re-validates the best checkpoint).
        torch.distributed.destroy_process_group()
    if not trainer.is_global_zero:
        return FitOutcome(wall, None, None, earlier)
    if history is not None:
        restore_metrics_history(out_dir, history)
    best_path = ckpt_best.best_model_path or str(last)
    best = torch.load(best_path, map_location="cpu", weights_only=True)
    module.load_state_dict(best["state_dict"])
    return FitOutcome(wall, best, best_path, earlier)


def _cpu_device() -> str:
    """The CPU budget a run had: the torch threads it trained with and the machine's cores."""
    n = torch.get_num_threads()
    return f"cpu ({n} thread{'s' if n > 1 else ''} of {os.cpu_count()} cores)"


def cpu_model() -> dict[str, str]:
    """The CPU behind a wall-clock budget: its model name (``/proc/cpuinfo``, else ``platform.processor()``) and the
    vector instruction set torch's kernels use on it. Two 2-core machines can differ by 1.5x in a run's wall time, and
    runs with the same seed differ between them by about a seed's spread (RESULTS.md section 15)."""
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
    from popevit.training.callbacks import ImagesSeen, max_time_timer

    seen = next((c.count for c in trainer.callbacks if isinstance(c, ImagesSeen)), None)
    timer = max_time_timer(trainer)
    time_left = timer.time_remaining() if timer is not None else None
    return {
        "popevit_version": __version__,
        "git_commit": _git_commit(),
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


INIT_RECORD = "init.json"  # the --init weights a run started from, beside its config.yaml
STAGE_RECORDS = ("run.json", "pretrain.json")  # what popevit train and popevit pretrain write beside their weights


def record_init(out_dir: Path, init: Path | None, resume: bool) -> Path | None:
    """The ``--init`` weights of a run, which belong to it like its config: a new run writes them (path and sha256,
    or none) to ``out_dir/init.json``; ``--resume`` reads them back, so that the run still charges its pretraining to
    its budget (:func:`upstream_stages`) without ``--init`` given again, and refuses other weights than it started
    from. A run started before popevit kept the record takes the ``--init`` given on resume, as it used to.

    Returns:
        The run's ``--init`` weights (as first given), or None.
    """
    record = out_dir / INIT_RECORD
    if not resume:
        text = json.dumps(
            {"path": None if init is None else str(init), "sha256": None if init is None else file_sha256(init)}
        )
        atomic_write_bytes(record, lambda tmp: Path(tmp).write_text(text))
        return init
    if not record.is_file():
        return init
    started = json.loads(record.read_text())
    if init is not None and file_sha256(init) != started["sha256"]:
        began = "without --init" if started["path"] is None else f"from --init {started['path']}"
        raise RunDirError(
            f"--resume refused: {str(out_dir)!r} started {began}, and --init {str(init)!r} holds other weights; "
            "resume without --init (the checkpoint holds the weights), or start a new run with --out"
        )
    return None if started["path"] is None else Path(started["path"])


def upstream_stages(teacher: Path | None, init: Path | None) -> list[dict[str, Any]]:
    """The training stages a run is built on, with their compute, so that a two-stage recipe states its whole budget
    (issue 10: a distilled student's teacher and a fine-tune's pretraining count against it).

    One record per stage: its role (``teacher``, ``init``), folder, wall time, epochs, images seen and device, read
    from the ``run.json`` or ``pretrain.json`` beside it; then the stages that stage was itself built on. A stage
    with no such record (weights from elsewhere) has ``wall_s`` None: its compute is unknown, not zero.
    """
    stages: list[dict[str, Any]] = []
    for role, folder in (("teacher", teacher), ("init", None if init is None else Path(init).parent)):
        if folder is None:
            continue
        record = next((folder / n for n in STAGE_RECORDS if (folder / n).is_file()), None)
        info = json.loads(record.read_text()) if record is not None else {}
        stages.append(
            {
                "role": role,
                "path": str(folder),
                "record": None if record is None else record.name,
                **{k: info.get(k) for k in ("wall_s", "epochs", "images_seen", "device")},
            }
        )
        stages += info.get("upstream", [])
    return stages


def stages_wall_s(stages: list[dict[str, Any]]) -> float | None:
    """Wall time of the stages a run was built on (:func:`upstream_stages`); None when one's compute is unknown."""
    if any(s["wall_s"] is None for s in stages):
        return None
    return sum(s["wall_s"] for s in stages)


def train(
    cfg: ExperimentConfig, out_dir: str | Path, *, resume: bool = False, init: str | Path | None = None
) -> RunResult:
    """Train one experiment into ``out_dir``.

    Args:
        cfg: validated experiment config.
        out_dir: run directory; must not hold a run unless ``resume``.
        resume: continue from ``out_dir/checkpoints/last.ckpt`` (optimizer, scheduler, early stopping, epoch).
        init: optional ``model.safetensors`` to initialise the weights from (fine-tuning).

    Returns:
        The run's directory, classes, best validation metrics, wall time and epochs run.
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor

    from popevit.data.datamodule import MRIDataModule
    from popevit.training.callbacks import RankMetricsRecorder, ema_callback
    from popevit.training.module import ClassifierModule, check_teacher_preprocess

    out_dir = Path(out_dir)
    cifar = cfg.data.dataset != "folder"
    if cfg.model.distill is not None:  # before the run folder exists
        check_teacher_preprocess(cfg.model.distill.teacher, cfg.data.preprocess)
    if init is not None and not Path(init).is_file():
        raise FileNotFoundError(
            f"--init weights {str(init)!r} not found; pass the model.safetensors of a popevit train run or the "
            "encoder.safetensors of a popevit pretrain run"
        )
    manifest = prepare_run_dir(cfg, out_dir, resume)
    if launcher_rank() == 0:
        init = record_init(out_dir, None if init is None else Path(init), resume)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    if cifar:
        from popevit.data.cifar import CIFARDataModule

        dm = CIFARDataModule(cfg.data, seed=cfg.train.seed)
    else:
        dm = MRIDataModule(cfg.data, manifest, seed=cfg.train.seed)
    dm.setup("fit")
    classes = list(dm.classes)
    weights = dm.class_weights.tolist() if cfg.optim.class_weighted else None
    kwargs = model_kwargs(cfg, len(classes))
    module = ClassifierModule(
        cfg.model.name,
        {**kwargs, "pretrained": str(cfg.model.pretrained) if cfg.model.pretrained else None},
        classes,
        cfg.optim.model_dump(mode="json"),
        weights,
        cfg.train.seed,
        cfg.model.distill.model_dump(mode="json") if cfg.model.distill else None,
        cfg.data.augment.model_dump(mode="json") if cfg.data.augment.mixing else None,
    )
    if init is not None and not resume:
        _load_init(module.model, Path(init))

    accelerator = cfg.train.accelerator
    on_gpu, precision = device_precision(cfg)
    mode = "min" if cfg.train.monitor == "val/loss" else "max"
    ckpt_best = best_checkpoint(out_dir, cfg.train.monitor, mode)
    callbacks: list[Any] = [ckpt_best, LearningRateMonitor(logging_interval="epoch"), RankMetricsRecorder(out_dir)]
    if cfg.train.patience is not None:
        callbacks.append(EarlyStopping(monitor=cfg.train.monitor, mode=mode, patience=cfg.train.patience))
    if cfg.train.ema_decay is not None:
        # Validation (hence early stopping and the best checkpoint) sees the averaged weights; the saved checkpoints
        # hold them as their state_dict (the raw weights ride along for --resume), so the artefact is the EMA model.
        callbacks.append(ema_callback(cfg.train.ema_decay, warmup=cfg.train.ema_warmup))
    trainer = make_trainer(cfg, out_dir, callbacks, precision)
    fit = fit_and_load_best(cfg, trainer, module, dm, ckpt_best, out_dir, resume)
    if fit.best is None:
        return RunResult(out_dir, classes, {}, fit.wall_s, trainer.current_epoch)

    best = fit.best
    extra = {"best_epoch": best.get("epoch"), "dataset": cfg.data.dataset}
    if cifar:  # CIFAR is normalised with training-set channel statistics, not per image
        extra["channel_stats"] = {k: dm.stats.get(k) for k in ("mean", "std")}
    meta = ModelMeta(cfg.model.name, kwargs, classes, cfg.data.preprocess, extra=extra)
    save_artifact(module.model, meta, out_dir)

    val_trainer = L.Trainer(
        accelerator="cpu" if not on_gpu else accelerator,
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        precision=precision,
    )
    val = {k: float(v) for k, v in val_trainer.validate(module, datamodule=dm, verbose=False)[0].items()}
    _write_json(out_dir / "val_metrics.json", val)
    stages = upstream_stages(cfg.model.distill.teacher if cfg.model.distill else None, init)
    _write_json(
        out_dir / "run.json",
        {
            **provenance(fit, trainer, None if cifar else manifest, on_gpu, precision, resume),
            "upstream": stages,
            "budget_wall_s": None if (up := stages_wall_s(stages)) is None else round(fit.wall_s + up, 2),
            "classes": classes,
            "data_stats": getattr(dm, "stats", None) if cifar else None,
        },
    )
    return RunResult(out_dir, classes, val, fit.wall_s, trainer.current_epoch)


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2)
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))


def _load_init(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file

    state = load_file(str(path))
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
    """Load config + overrides, then :func:`train`. The default run folder is ``runs/<config name>``."""
    cfg = load_config(config, overrides)
    out_dir = Path(out) if out is not None else Path("runs") / cfg.name
    return train(cfg, out_dir, resume=resume, init=init)
