"""Fitting a run with Lightning: the Trainer, its checkpoints, and the fit that survives interruption.

This module owns what happens between a checked run folder and the best weights: the Trainer (logs, ``last.ckpt``
at every validation, atomic writes, devices, precision), ``trainer.fit`` resumed from ``last.ckpt`` with the
training history kept (:mod:`popevit.training.history`), Ctrl-C and SIGTERM turned into a report of where
``--resume`` continues, and the best checkpoint loaded on rank 0.

Lightning and the training callbacks are each a heavy import, made by the functions that build the Trainer.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch

from popevit.config import ExperimentConfig
from popevit.training.history import keep_metrics_history, restore_metrics_history


class TrainingInterrupted(RuntimeError):
    """Training stopped on Ctrl-C (exit code 130) or SIGTERM (143, a scheduler's preemption); the run folder holds
    ``checkpoints/last.ckpt`` of the last finished epoch, from which ``--resume`` continues exactly."""

    plain = True  # a report, not an error: the CLI prints it without "error:"

    def __init__(self, message: str, exit_code: int, out_dir: Path) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.out_dir = out_dir


def launcher_rank() -> int:
    """Global rank as set by Lightning's DDP launcher, torchrun or SLURM before any process group exists."""
    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ and (var != "SLURM_PROCID" or int(os.environ.get("SLURM_NTASKS", "1")) > 1):
            return int(os.environ[var])
    node = int(os.environ.get("NODE_RANK", os.environ.get("GROUP_RANK", "0")))
    return node * 1000 + int(os.environ.get("LOCAL_RANK", "0"))


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
    from lightning.fabric.utilities.exceptions import MisconfigurationException
    from lightning.pytorch.callbacks import TQDMProgressBar
    from lightning.pytorch.loggers import TensorBoardLogger

    from popevit import progress
    from popevit.training.callbacks import EarlierWallClock, ImagesSeen
    from popevit.training.checkpoint import AtomicCSVLogger

    callbacks = [*callbacks, latest_checkpoint(out_dir), ImagesSeen(), EarlierWallClock()]
    # Lightning's bar only on a terminal, and not under a popevit bar (a sweep's trials): one live display at a time.
    if cfg.train.progress_bar and progress.enabled() and not progress.active():
        callbacks = [*callbacks, TQDMProgressBar(refresh_rate=10)]
    loggers = [
        AtomicCSVLogger(out_dir / "logs", name="csv", version=""),
        TensorBoardLogger(out_dir / "logs", name="tb", version=""),
    ]
    try:
        return _trainer(cfg, out_dir, callbacks, precision, loggers)
    except (MisconfigurationException, ValueError) as err:  # the devices asked for are not there, or not a pair
        t = cfg.train
        raise ValueError(
            f"train.accelerator={t.accelerator}, train.devices={t.devices}, train.strategy={t.strategy}, "
            f"train.precision={t.precision}: {err} (CUDA available: {torch.cuda.is_available()}); ask for devices "
            "this machine has, e.g. --set train.accelerator=cpu --devices 1"
        ) from None


def _trainer(cfg: ExperimentConfig, out_dir: Path, callbacks: list[Any], precision: str, loggers: list[Any]) -> Any:
    """``L.Trainer`` with the run's settings (see :func:`make_trainer`)."""
    import lightning as L
    from lightning.pytorch.callbacks import ProgressBar

    from popevit.training.checkpoint import AtomicCheckpointIO

    show_bar = any(isinstance(c, ProgressBar) for c in callbacks)  # make_trainer adds one only on a terminal
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


@contextlib.contextmanager
def _lightning_owns_sigterm() -> Iterator[None]:
    """Let Lightning alone handle SIGTERM during ``fit`` (it stops at the next batch boundary): a handler installed
    before it, such as the CLI's, would be chained and could raise in the middle of a step."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    if main:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _interrupted(what: str, code: int, trainer: Any, out_dir: Path) -> TrainingInterrupted:
    """The report of a run stopped by ``what``: where it stopped and where ``--resume`` will continue."""
    last = out_dir / "checkpoints" / "last.ckpt"
    if last.is_file():
        try:
            epoch = int(torch.load(last, map_location="cpu", weights_only=True, mmap=True)["epoch"])
            at = f"checkpoints/last.ckpt holds the end of epoch {epoch + 1}, and --resume continues from there"
        except Exception:  # the report must not fail; the checkpoint is checked on resume
            at = "--resume continues from checkpoints/last.ckpt"
    else:
        at = "no epoch had finished, so --resume starts it again from the beginning"
    return TrainingInterrupted(
        f"training stopped by {what} in epoch {trainer.current_epoch + 1}; {at} (same result as an uninterrupted "
        f"run; the epoch in progress is repeated)",
        code,
        out_dir,
    )


def fit_and_load_best(
    cfg: ExperimentConfig, trainer: Any, module: Any, dm: Any, ckpt_best: Any, out_dir: Path, resume: bool
) -> FitOutcome:
    """``trainer.fit`` (from ``last.ckpt`` when resuming; out-of-memory names the smaller batch to retry with), then
    tear down DDP and, on rank 0 only, load the best checkpoint (else the last) into ``module``. A resumed run keeps
    the training curves of its earlier processes, and its wall time includes them
    (:class:`~popevit.training.callbacks.EarlierWallClock`)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from popevit.training.callbacks import EarlierWallClock, InterruptRecorder

    last = out_dir / "checkpoints" / "last.ckpt"
    history = keep_metrics_history(out_dir, last) if resume and launcher_rank() == 0 else None
    recorder = InterruptRecorder()
    trainer.callbacks.append(recorder)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings(), _lightning_owns_sigterm():
            if history is not None:  # the "previous log files will be deleted" warning: they are put back below
                warnings.filterwarnings("ignore", message="Experiment logs directory .* is not empty")
            trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume else None)
    except SIGTERMException:
        raise _interrupted("SIGTERM", 143, trainer, out_dir) from None
    except SystemExit as err:
        if isinstance(recorder.exception, KeyboardInterrupt):
            raise _interrupted("Ctrl-C", 130, trainer, out_dir) from None
        raise RuntimeError(f"training stopped: {recorder.exception or err}") from err
    except KeyboardInterrupt:  # before or after Lightning's own handling
        raise _interrupted("Ctrl-C", 130, trainer, out_dir) from None
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
