"""Atomic writes of a run's files: a crash or a full disk mid-write never leaves a corrupt ``last.ckpt`` or a
truncated ``metrics.csv``."""

from __future__ import annotations

import csv
import errno
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO

from popevit.io import atomic_write_bytes


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, quota, permissions); the previous one is intact."""


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save to a temporary file in the target folder, fsync, then ``os.replace`` over the old checkpoint.

    A full disk surfaces from ``torch.save`` as a ``RuntimeError`` ("PytorchStreamWriter failed writing file"),
    not an ``OSError``; both become a :class:`CheckpointWriteError` that names the checkpoint and the fix.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):  # remote storage: fsspec transactions
            return super().save_checkpoint(checkpoint, path, storage_options)

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)

        try:
            atomic_write_bytes(Path(path), write)
        except (OSError, RuntimeError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
            raise CheckpointWriteError(
                err.errno if isinstance(err, OSError) and err.errno else errno.EIO,
                f"could not write the checkpoint ({reason}); the previous checkpoint is intact. Free disk space "
                "(or fix the folder's permissions) and continue with --resume",
                str(path),
            ) from err


class _AtomicCSVWriter(ExperimentWriter):
    """Lightning's CSV writer, but the whole-file rewrite it does when a new metric name appears goes through a temp
    file. Its own rewrite opens ``metrics.csv`` for writing, which truncates it, and only then writes the rows back,
    so a kill in between (the first epoch end, just after ``last.ckpt``, logs new names) loses every earlier row."""

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        if "://" in self.metrics_file_path and not self.metrics_file_path.startswith("file://"):
            return super()._rewrite_with_new_header(fieldnames)  # remote storage: Lightning's own write
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))

        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fieldnames)
                writer.writeheader()
                writer.writerows(rows)

        atomic_write_bytes(Path(self.metrics_file_path), write)


class AtomicCSVLogger(CSVLogger):
    """:class:`~lightning.pytorch.loggers.CSVLogger` whose header rewrites are atomic (:class:`_AtomicCSVWriter`)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AtomicCSVWriter(log_dir=self.log_dir)
        return self._experiment
