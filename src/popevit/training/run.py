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

import contextlib
import csv
import difflib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import yaml

from popevit import __version__
from popevit.artifact import ModelMeta, file_sha256, save_artifact
from popevit.config import ConfigError, ExperimentConfig, dump_config, load_config
from popevit.data.checks import Skip, write_skipped
from popevit.data.manifest import Manifest
from popevit.io import atomic_write_bytes, read_json

SKIPPED = "skipped.csv"  # every file the run did not use, with the reason


class RunDirError(RuntimeError):
    """The output folder cannot be used as asked (exists without --resume, config changed on resume, ...)."""


class TrainingInterrupted(RuntimeError):
    """Training stopped on Ctrl-C (exit code 130) or SIGTERM (143, a scheduler's preemption); the run folder holds
    ``checkpoints/last.ckpt`` of the last finished epoch, from which ``--resume`` continues exactly."""

    plain = True  # a report, not an error: the CLI prints it without "error:"

    def __init__(self, message: str, exit_code: int, out_dir: Path) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.out_dir = out_dir


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
    dest = out_dir / "manifest.csv"
    manifest, _ = source_manifest(cfg)
    if cfg.data.manifest is None or Path(cfg.data.manifest).resolve() != dest.resolve():
        copy_manifest(manifest, dest)
    return dest


def source_manifest(cfg: ExperimentConfig) -> tuple[Manifest, list[Skip]]:
    """The run's manifest, read or made in memory and checked, before anything is written.

    ``--manifest FILE`` is read (errors name FILE); ``--data DIR`` is split with the duplicate-grouped splitter
    (errors name DIR). The manifest must have training images, validation images when validation runs, and training
    images of every class it lists.

    Returns:
        The manifest (for ``--data``, not yet written: its ``path`` is the data folder) and the files discovery
        skipped, with their reasons.
    """
    from popevit.data.cache import default_cache_dir
    from popevit.data.manifest import EXCLUDED, read_manifest, split_data

    d = cfg.data
    skipped: list[Skip] = []
    if d.manifest is not None:
        if not Path(d.manifest).is_file():
            raise FileNotFoundError(f"manifest {str(d.manifest)!r} not found; make one with `popevit data split DATA`")
        manifest = read_manifest(d.manifest)
        source = str(d.manifest)
    elif d.data is None:
        from popevit.data.location import NO_DATA

        raise ValueError(NO_DATA)
    elif not Path(d.data).is_dir():
        kind = "is a file, not a folder" if Path(d.data).exists() else "not found"
        raise FileNotFoundError(f"data folder {str(d.data)!r} {kind}; pass --data with the Kaggle Training folder")
    else:
        disc, rows = split_data(
            Path(d.data),
            seed=d.split_seed,
            ratios=d.ratios,
            class_map=d.class_map,
            classes=d.classes,
            binary=d.binary,
            cache_dir=default_cache_dir(d.cache_dir),
        )
        manifest = Manifest(Path(d.data), rows, sorted({r.label for r in rows}), sha256="")
        skipped, source = disc.skipped, str(d.data)
    counts = manifest.counts()
    n_train = sum(counts["train"].values())
    if n_train == 0:
        found = {k: sum(v.values()) for k, v in counts.items() if sum(v.values())}
        raise ValueError(
            f"{source!r} has no training images (rows per split: {found}); re-split it with `popevit data split` "
            "(e.g. --ratios 0.8,0.1,0.1)"
        )
    if sum(counts["val"].values()) == 0 and cfg.train.limit_val_batches != 0:
        raise ValueError(
            f"{source!r} has no validation images, and validation picks the best checkpoint ({cfg.train.monitor}); "
            "re-split it with a validation share (e.g. --ratios 0.8,0.1,0.1)"
        )
    untrained = [c for c in manifest.classes if counts["train"].get(c, 0) == 0 and
                 any(r.label == c and r.split != EXCLUDED for r in manifest.rows)]  # fmt: skip
    if untrained:
        raise ValueError(
            f"{source!r}: classes {untrained} have no training images; give them training images or leave them out "
            "(data.classes)"
        )
    return manifest, skipped


def copy_manifest(manifest: Manifest, dest: Path) -> Path:
    """Write ``manifest`` to the run folder: a byte copy of the user's file when its paths are absolute, else its rows
    with every path made absolute, so that the copy still finds the images (relative paths in a manifest are
    relative to the manifest's own folder, which the copy is not in)."""
    from popevit.data.manifest import write_manifest

    original = Path(manifest.path)
    if original.is_file():
        raw = original.read_bytes()
        header = raw.split(b"\n", 1)[0].decode("utf-8-sig", "replace").strip().split(",")
        if _all_absolute(original) and "path" in header:
            atomic_write_bytes(dest, raw)
            return dest
    return write_manifest(manifest.rows, dest)


def _all_absolute(path: Path) -> bool:
    import csv

    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        return all(Path(rec.get("path") or "").is_absolute() for rec in csv.DictReader(f))


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


def check_out_dir(
    out_dir: Path, resume: bool, cfg: ExperimentConfig | None = None, init: str | Path | None = None
) -> None:
    """Refuse an output folder that cannot take this run, before anything is written there.

    A new run needs a new or empty folder; ``--resume`` needs a run with the same config (``cfg``, when given) and
    ``--init`` weights that has not finished. A folder holding other files is never written into, so none of them
    can be replaced.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise RunDirError(f"--out {str(out_dir)!r} is a file, not a folder; pass a folder for the run (e.g. runs/NAME)")
    has_run = (out_dir / "config.yaml").is_file()
    if resume:
        if not has_run:
            raise RunDirError(
                f"--resume: {str(out_dir)!r} holds no popevit run (no config.yaml); start the run without --resume"
            )
        if cfg is not None:
            _check_resume(cfg, out_dir)
        record_init(out_dir, None if init is None else Path(init), resume=True)  # reads only: refuses other weights
        _check_checkpoint(out_dir / "checkpoints" / "last.ckpt")
        if (out_dir / "run.json").is_file():
            raise RunDirError(
                f"--resume: the run in {str(out_dir)!r} is finished (it has run.json and its model); nothing was "
                "changed. To train longer or again, start a new run with another --out"
            )
        return
    if has_run:
        if not (out_dir / "checkpoints" / "last.ckpt").is_file():
            raise RunDirError(
                f"{str(out_dir)!r} holds a run that stopped before its first checkpoint; pass --resume to start it "
                "again from the beginning, or choose another --out"
            )
        raise RunDirError(f"{str(out_dir)!r} already holds a run; pass --resume to continue it or choose another --out")
    if out_dir.is_dir():
        others = sorted(p.name for p in out_dir.iterdir())
        if others:
            shown_names = ", ".join(others[:5]) + (f", ... ({len(others)} entries)" if len(others) > 5 else "")
            raise RunDirError(
                f"--out {str(out_dir)!r} is not empty and holds no popevit run ({shown_names}); popevit never writes "
                f"among other files: pass a new or empty folder, e.g. --out {out_dir / 'run'}"
            )


def _check_checkpoint(path: Path) -> None:
    """Refuse a damaged ``last.ckpt`` (truncated by a full disk before popevit wrote atomically, or edited) before
    ``--resume`` builds anything; a missing one is fine (the run starts again)."""
    if not path.is_file():
        return
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        missing = [k for k in ("epoch", "global_step", "state_dict") if k not in ckpt]  # what --resume needs
        if missing:
            raise KeyError(f"no {missing}")
    except Exception as err:
        raise RunDirError(
            f"--resume: {str(path)!r} is damaged ({type(err).__name__}: {str(err).splitlines()[0][:160]}); restore "
            f"it from a copy, or delete it to start the run again from the beginning"
        ) from None


def prepare_run_dir(
    cfg: ExperimentConfig, out_dir: Path, resume: bool, manifest: Manifest | None = None, skipped: Sequence[Skip] = ()
) -> Path:
    """Check and fill a run folder (config.yaml, manifest.csv, skipped.csv) on rank 0; other ranks wait for rank 0.

    Args:
        cfg: the run's config.
        out_dir: the run folder.
        resume: continue the run in ``out_dir``.
        manifest: the checked manifest (:func:`source_manifest`) to copy in; None reads or makes it here.
        skipped: files the data source skipped, written to ``skipped.csv`` with their reasons.

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
    check_out_dir(out_dir, resume, cfg)
    dest = out_dir / "manifest.csv"
    fresh = not resume or not (out_dir / "checkpoints" / "last.ckpt").is_file()  # no checkpoint yet: start over
    if fresh and not cifar and manifest is None:
        manifest, skipped = source_manifest(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    if fresh and not cifar:
        assert manifest is not None
        copy_manifest(manifest, dest)
    if skipped:
        write_skipped(out_dir / SKIPPED, skipped)
    if fresh:
        atomic_write_bytes(out_dir / "config.yaml", lambda tmp: Path(tmp).write_text(cfg_text))
    return dest


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
    show_bar = cfg.train.progress_bar and progress.enabled() and not progress.active()
    if show_bar:
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
    started = read_json(record, "record of a run")
    if init is not None and file_sha256(init) != started["sha256"]:
        began = "without --init" if started["path"] is None else f"from --init {started['path']}"
        raise RunDirError(
            f"--resume refused: {str(out_dir)!r} started {began}, and --init {str(init)!r} holds other weights; "
            "resume without --init (the checkpoint holds the weights), or start a new run with --out"
        )
    return None if started["path"] is None else Path(started["path"])


def upstream_stages(teacher: Path | None, init: Path | None) -> list[dict[str, Any]]:
    """The training stages a run is built on, with their compute, so that a two-stage recipe states its whole budget
    (a distilled student's teacher and a fine-tune's pretraining count against it).

    One record per stage: its role (``teacher``, ``init``), folder, wall time, epochs, images seen and device, read
    from the ``run.json`` or ``pretrain.json`` beside it; then the stages that stage was itself built on. A stage
    with no such record (weights from elsewhere) has ``wall_s`` None: its compute is unknown, not zero.
    """
    stages: list[dict[str, Any]] = []
    for role, folder in (("teacher", teacher), ("init", None if init is None else Path(init).parent)):
        if folder is None:
            continue
        record = next((folder / n for n in STAGE_RECORDS if (folder / n).is_file()), None)
        info = read_json(record, "record of a run") if record is not None else {}
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


def run_data(cfg: ExperimentConfig, out_dir: Path, resume: bool) -> tuple[Any, Manifest | None, list[Skip]]:
    """The DataModule of a run, set up (every image read once), before the run folder is written.

    A new run reads the user's manifest or splits the user's folder (:func:`source_manifest`), so errors name them;
    a resumed run, and every rank but 0, reads the run's own ``manifest.csv``.

    Returns:
        ``(datamodule, manifest to copy into the run or None, files discovery skipped)``.
    """
    from popevit.data.datamodule import MRIDataModule

    if cfg.data.dataset != "folder":
        from popevit.data.cifar import CIFARDataModule

        dm = CIFARDataModule(cfg.data, seed=cfg.train.seed)
        dm.setup("fit")
        return dm, None, []
    manifest: Manifest | None = None
    skipped: list[Skip] = []
    if resume:
        source: Path | Manifest = out_dir / "manifest.csv"
    elif launcher_rank() != 0:
        source = _wait_for(out_dir / "config.yaml", out_dir / "manifest.csv")
    else:
        manifest, skipped = source_manifest(cfg)
        source = manifest
    dm = MRIDataModule(cfg.data, source, seed=cfg.train.seed)
    dm.setup("fit")
    return dm, manifest, skipped


def report_data(dm: Any, skipped: Sequence[Skip], out_dir: Path) -> None:
    """Say on stderr what the run does not use and why (all of it in ``skipped.csv``), and doubtful classes."""
    from popevit.data.checks import class_warnings, format_skipped

    bad = [Skip(Path(p), reason or "excluded in the manifest") for p, reason in getattr(dm, "skipped", [])]
    everything = [*skipped, *bad]
    if bad:
        write_skipped(out_dir / SKIPPED, everything)
    text = format_skipped(everything, listing=out_dir / SKIPPED)
    manifest = getattr(dm, "manifest", None)
    counts = {c: len(rows) for c, rows in _rows_per_class(manifest).items()} if manifest is not None else {}
    notes = class_warnings(counts, manifest.path) if counts else []
    for line in [text, *(f"warning: {w}" for w in notes)]:
        if line:
            print(line, file=sys.stderr, flush=True)


def _rows_per_class(manifest: Manifest) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for r in manifest.select(None):
        out.setdefault(r.label, []).append(r)
    return out


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

    from popevit.training.callbacks import RankMetricsRecorder, ema_callback
    from popevit.training.module import ClassifierModule, check_teacher_preprocess

    # Everything is checked before the run folder is made, so that a mistake leaves no half-made run behind and the
    # corrected command is not refused: the folder, the config, the data (read, split, decoded), the model, the
    # --init weights and the devices.
    out_dir = Path(out_dir)
    cifar = cfg.data.dataset != "folder"
    rank0 = launcher_rank() == 0
    if rank0:
        check_out_dir(out_dir, resume, cfg, init)
    resume = resume and (out_dir / "checkpoints" / "last.ckpt").is_file()  # no checkpoint yet: start over
    if cfg.model.distill is not None:
        check_teacher_preprocess(cfg.model.distill.teacher, cfg.data.preprocess)
    if init is not None and not Path(init).is_file():
        raise FileNotFoundError(
            f"--init weights {str(init)!r} not found; pass the model.safetensors of a popevit train run or the "
            "encoder.safetensors of a popevit pretrain run"
        )
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    dm, manifest, skipped = run_data(cfg, out_dir, resume)
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
        label_sets=getattr(dm, "label_sets", None) or None,
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

    # Checked: now the run folder.
    manifest_path = prepare_run_dir(cfg, out_dir, resume, manifest, skipped)
    if rank0:
        init = record_init(out_dir, None if init is None else Path(init), resume)
        report_data(dm, skipped, out_dir)
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
            **provenance(fit, trainer, None if cifar else manifest_path, on_gpu, precision, resume),
            "upstream": stages,
            "budget_wall_s": None if (up := stages_wall_s(stages)) is None else round(fit.wall_s + up, 2),
            "classes": classes,
            "data_stats": getattr(dm, "stats", None) if cifar else None,
        },
    )
    from popevit.serve.card import write_model_card

    write_model_card(out_dir)
    return RunResult(out_dir, classes, val, fit.wall_s, trainer.current_epoch)


def _write_json(path: Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2)
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))


def _load_init(model: torch.nn.Module, path: Path) -> None:
    from popevit.artifact import load_weights

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
