"""The portable model artefact: ``model.safetensors`` (weights) + ``model.json`` (how to rebuild and feed it).

Evaluation, explanation and prediction load this, never a pickle. ``model.json`` holds the registered model name
and its keyword arguments, the class list in output order, and the preprocessing settings.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from popevit import __version__
from popevit.config import PreprocessConfig

FORMAT = "popevit-model/1"
WEIGHTS = "model.safetensors"
META = "model.json"
ARCHIVE = "archive.json"  # marks an archived run: records and predictions, no weights (popevit.evaluation.archive)


@dataclass
class ModelMeta:
    """Everything needed to rebuild a model and feed it the way it was trained."""

    name: str
    kwargs: dict[str, Any]
    classes: list[str]
    preprocess: PreprocessConfig
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "popevit_version": __version__,
            "model": {"name": self.name, "kwargs": self.kwargs},
            "classes": self.classes,
            "preprocess": self.preprocess.model_dump(mode="json"),
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ModelMeta:
        if d.get("format") != FORMAT:
            raise ValueError(f"model.json has format {d.get('format')!r}, expected {FORMAT!r}; re-export the model")
        return cls(
            name=d["model"]["name"],
            kwargs=d["model"]["kwargs"],
            classes=list(d["classes"]),
            preprocess=PreprocessConfig.model_validate(d["preprocess"]),
            extra=d.get("extra", {}),
        )


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (weights, manifests: what a record says it was made from).

    Remembered per file by its (inode, size, modification time in ns), as git's index trusts stat data, so a study
    that checks the same run's weights at several input sizes reads a 45 MB ResNet18 once, not once per size. A
    rewrite (``atomic_write_bytes`` makes a new inode, and the time moves) is hashed afresh.
    """
    path = Path(path).resolve()
    st = path.stat()
    return _sha256_of(path, st.st_ino, st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256_of(path: Path, inode: int, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def param_count(weights: str | Path) -> int:
    """Number of parameters (and buffers) in a safetensors file, read from its header without loading tensors."""
    with safe_open(str(weights), framework="pt") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (not iterable)


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Write through a temp file in the same folder then rename, so a crash never leaves a half-written file.

    Args:
        path: destination.
        write: callable taking the temporary path and writing the content there.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_artifact(model: torch.nn.Module, meta: ModelMeta, out_dir: str | Path) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``out_dir`` atomically; returns ``out_dir``."""
    out_dir = Path(out_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # safetensors refuses shared storage; clone tied tensors so the file is self-contained.
    seen: dict[int, str] = {}
    for k, v in state.items():
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen and v.numel() > 0:
            state[k] = v.clone()
        seen[ptr] = k
    atomic_write_bytes(out_dir / WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"format": FORMAT}))
    text = json.dumps(meta.to_json(), indent=2)
    atomic_write_bytes(out_dir / META, lambda tmp: Path(tmp).write_text(text))
    return out_dir


def load_meta(run_dir: str | Path) -> ModelMeta:
    run_dir = Path(run_dir)
    meta_path = run_dir / META
    if not meta_path.is_file():
        raise FileNotFoundError(
            f"{str(meta_path)!r} not found: {str(run_dir)!r} is not a finished popevit run "
            f"(train one with `popevit train --config ... --out {run_dir}`)"
        )
    return ModelMeta.from_json(json.loads(meta_path.read_text()))


def load_artifact(run_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelMeta]:
    """Rebuild the model of a run from its artefact, in eval mode.

    Args:
        run_dir: folder holding ``model.safetensors`` and ``model.json``.
        map_location: device for the weights.

    Returns:
        ``(model, meta)``.
    """
    from popevit.models import create_model

    run_dir = Path(run_dir)
    meta = load_meta(run_dir)
    if not (run_dir / WEIGHTS).is_file() and (run_dir / ARCHIVE).is_file():
        origin = json.loads((run_dir / ARCHIVE).read_text()).get("archived_from", "its original run folder")
        raise FileNotFoundError(
            f"{str(run_dir)!r} is an archived run (`popevit archive`): it keeps predictions, not weights, so only "
            f"`popevit compare`, `study` and `report` can read it; use the run it was archived from ({origin})"
        )
    model = create_model(meta.name, **meta.kwargs)
    state = load_file(str(run_dir / WEIGHTS), device=str(map_location))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"{run_dir / WEIGHTS} does not match model {meta.name!r}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}; the artefact was written by another popevit version"
        )
    return model.to(map_location).eval(), meta
