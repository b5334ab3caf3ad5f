"""Atomic checkpoint writes: a crash or a full disk mid-write never leaves a corrupt ``last.ckpt``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from popevit.artifact import atomic_write_bytes


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save to a temporary file in the target folder, fsync, then ``os.replace`` over the old checkpoint."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):  # remote storage: fsspec transactions
            return super().save_checkpoint(checkpoint, path, storage_options)

        def write(tmp: str) -> None:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())

        try:
            atomic_write_bytes(Path(path), write)
        except OSError as err:
            raise RuntimeError(
                f"could not write checkpoint {str(path)!r} ({err.strerror}); the previous checkpoint is intact. "
                "Free disk space and rerun with --resume."
            ) from err
