"""The run folder of ``popevit train`` and ``popevit pretrain``: what it holds, and the checks before it is written.

This module owns the folder's layout and its guards: an output folder is refused before anything is written when it
cannot take the run (a file, a folder of other files, a finished run, a changed config or ``--init`` on resume, a
damaged checkpoint); the data are read and checked before the folder is made; rank 0 writes ``config.yaml``,
``manifest.csv``, ``skipped.csv`` and ``init.json`` while other ranks wait for them.

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

The DataModules import Lightning, a heavy import made only by :func:`run_data`, which builds them.
"""

from __future__ import annotations

import csv
import difflib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import yaml

from popevit.artifact import file_sha256
from popevit.config import ConfigError, ExperimentConfig, dump_config, load_config
from popevit.data.cache import default_cache_dir
from popevit.data.checks import Skip, class_warnings, format_skipped, write_skipped
from popevit.data.manifest import EXCLUDED, Manifest, read_manifest, split_data, write_manifest
from popevit.io import atomic_write_bytes, atomic_write_text, read_json
from popevit.training import provenance
from popevit.training.fit import launcher_rank

SKIPPED = "skipped.csv"  # every file the run did not use, with the reason


INIT_RECORD = "init.json"  # the --init weights a run started from, beside its config.yaml


class RunDirError(RuntimeError):
    """The output folder cannot be used as asked (exists without --resume, config changed on resume, ...)."""


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
    provenance.git_commit()  # the code this run imported, recorded at the end in run.json
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
        atomic_write_text(out_dir / "config.yaml", cfg_text)
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


def prepare_manifest(cfg: ExperimentConfig, out_dir: Path) -> Path:
    """Copy the given manifest into the run, or make a duplicate-grouped split of ``cfg.data.data`` there."""
    dest = out_dir / "manifest.csv"
    manifest, _ = source_manifest(cfg)
    if cfg.data.manifest is None or Path(cfg.data.manifest).resolve() != dest.resolve():
        copy_manifest(manifest, dest)
    return dest


def copy_manifest(manifest: Manifest, dest: Path) -> Path:
    """Write ``manifest`` to the run folder: a byte copy of the user's file when its paths are absolute, else its rows
    with every path made absolute, so that the copy still finds the images (relative paths in a manifest are
    relative to the manifest's own folder, which the copy is not in)."""
    original = Path(manifest.path)
    if original.is_file():
        raw = original.read_bytes()
        header = raw.split(b"\n", 1)[0].decode("utf-8-sig", "replace").strip().split(",")
        if _all_absolute(original) and "path" in header:
            atomic_write_bytes(dest, raw)
            return dest
    return write_manifest(manifest.rows, dest)


def _all_absolute(path: Path) -> bool:
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        return all(Path(rec.get("path") or "").is_absolute() for rec in csv.DictReader(f))


def record_init(out_dir: Path, init: Path | None, resume: bool) -> Path | None:
    """The ``--init`` weights of a run, which belong to it like its config: a new run writes them (path and sha256,
    or none) to ``out_dir/init.json``; ``--resume`` reads them back, so that the run still charges its pretraining
    to its budget (:func:`popevit.training.budget.upstream_stages`) without ``--init`` given again, and refuses
    other weights than it started from. A run started before popevit kept the record takes the ``--init`` given on
    resume, as it used to.

    Returns:
        The run's ``--init`` weights (as first given), or None.
    """
    record = out_dir / INIT_RECORD
    if not resume:
        text = json.dumps(
            {"path": None if init is None else str(init), "sha256": None if init is None else file_sha256(init)}
        )
        atomic_write_text(record, text)
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


def run_data(cfg: ExperimentConfig, out_dir: Path, resume: bool) -> tuple[Any, Manifest | None, list[Skip]]:
    """The DataModule of a run, set up (every image read once), before the run folder is written.

    A new run reads the user's manifest or splits the user's folder (:func:`source_manifest`), so errors name them;
    a resumed run, and every rank but 0, reads the run's own ``manifest.csv``.

    Returns:
        ``(datamodule, manifest to copy into the run or None, files discovery skipped)``.
    """
    from popevit.data.datamodule import MRIDataModule  # heavy import: Lightning

    if cfg.data.dataset != "folder":
        from popevit.data.cifar import CIFARDataModule  # heavy import: Lightning, torchvision

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
