"""The portable model artefact: ``model.safetensors`` (weights) + ``model.json`` (how to rebuild and feed it).

Evaluation, explanation and prediction load this, never a pickle. ``model.json`` holds the registered model name
and its keyword arguments, the class list in output order, and the preprocessing settings.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from popevit import __version__
from popevit.config import PreprocessConfig
from popevit.io import atomic_write_bytes, atomic_write_text, read_json, shown

__all__ = ["ModelMeta", "atomic_write_bytes", "file_sha256", "load_artifact", "load_meta", "save_artifact"]

FORMAT = "popevit-model/1"
WEIGHTS = "model.safetensors"
META = "model.json"
ARCHIVE = "archive.json"  # marks an archived run: records and predictions, no weights (popevit.evaluation.archive)


@dataclass
class ModelMeta:
    """Everything needed to rebuild a model and feed it the way it was trained.

    ``weights_sha256`` is the SHA-256 of the ``model.safetensors`` written beside it (set by :func:`save_artifact`;
    None in a ``model.json`` written before popevit recorded it). :func:`load_artifact` checks it, so damaged or
    swapped weights are refused instead of evaluated.
    """

    name: str
    kwargs: dict[str, Any]
    classes: list[str]
    preprocess: PreprocessConfig
    extra: dict[str, Any] = field(default_factory=dict)
    weights_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        d = {
            "format": FORMAT,
            "popevit_version": __version__,
            "model": {"name": self.name, "kwargs": self.kwargs},
            "classes": self.classes,
            "preprocess": self.preprocess.model_dump(mode="json"),
            "extra": self.extra,
        }
        if self.weights_sha256 is not None:
            d["weights_sha256"] = self.weights_sha256
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], source: str | Path = META) -> ModelMeta:
        """Parse a ``model.json`` dict; ``source`` names the file in errors."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            found = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"{shown(source)} has format {found!r}, expected {FORMAT!r}; re-export the model")
        try:
            return cls(
                name=str(d["model"]["name"]),
                kwargs=dict(d["model"]["kwargs"]),
                classes=[str(c) for c in d["classes"]],
                preprocess=PreprocessConfig.model_validate(d["preprocess"]),
                extra=d.get("extra", {}),
                weights_sha256=d.get("weights_sha256"),
            )
        except (KeyError, TypeError, ValueError) as err:
            what = f"lacks {err}" if isinstance(err, KeyError) else f"has a malformed field ({err})"
            raise ValueError(
                f"{shown(source)} {what}: it is damaged or was edited by hand; restore it from the run that wrote it"
            ) from None


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


def save_artifact(model: torch.nn.Module, meta: ModelMeta, out_dir: str | Path) -> Path:
    """Write ``model.safetensors`` and ``model.json`` (with the weights' SHA-256) into ``out_dir`` atomically.

    Returns:
        ``out_dir``.
    """
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
    meta.weights_sha256 = file_sha256(out_dir / WEIGHTS)
    atomic_write_text(out_dir / META, json.dumps(meta.to_json(), indent=2))
    return out_dir


def load_meta(run_dir: str | Path) -> ModelMeta:
    """The ``model.json`` of a run folder, checked (errors name the file and say what to do)."""
    run_dir = Path(run_dir)
    meta_path = run_dir / META
    if not meta_path.is_file():
        if not run_dir.exists():
            raise FileNotFoundError(
                f"run folder {shown(run_dir)!r} not found, so it is not a finished popevit run; pass the --out "
                "folder of a `popevit train` run"
            )
        raise FileNotFoundError(
            f"{shown(meta_path)!r} not found: {shown(run_dir)!r} is not a finished popevit run "
            f"(train one with `popevit train --config ... --out {shown(run_dir)}`)"
        )
    return ModelMeta.from_json(read_json(meta_path, "model.json"), meta_path)


def verify_weights(run_dir: str | Path, meta: ModelMeta) -> Path:
    """The run's ``model.safetensors``, checked against the SHA-256 its ``model.json`` recorded (when it did).

    Raises:
        FileNotFoundError: no weights file.
        ValueError: the weights differ from those saved with ``model.json`` (damaged, truncated or swapped).
    """
    weights = Path(run_dir) / WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{shown(weights)!r} not found: the run has no weights; train it again or restore them")
    if meta.weights_sha256 is not None and file_sha256(weights) != meta.weights_sha256:
        raise ValueError(
            f"{shown(weights)}: its SHA-256 differs from the one {META} recorded when the model was saved, so the "
            "weights were damaged or replaced; restore the file (or the run) from a copy, or train again"
        )
    return weights


def load_weights(path: str | Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file; a damaged or foreign file is a ``ValueError`` naming it."""
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError) as err:
        raise ValueError(
            f"{shown(path)}: not a readable safetensors file ({err}); it is damaged or truncated: restore it from "
            "a copy, or train again"
        ) from None


def load_artifact(run_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, ModelMeta]:
    """Rebuild the model of a run from its artefact, in eval mode.

    Args:
        run_dir: folder holding ``model.safetensors`` and ``model.json``.
        map_location: device for the weights.

    Returns:
        ``(model, meta)``.
    """
    from popevit.models import create_model  # timm: heavy, and reading model.json alone needs none of it

    run_dir = Path(run_dir)
    meta = load_meta(run_dir)
    if not (run_dir / WEIGHTS).is_file() and (run_dir / ARCHIVE).is_file():
        origin = read_json(run_dir / ARCHIVE, "archive.json").get("archived_from", "its original run folder")
        raise FileNotFoundError(
            f"{str(run_dir)!r} is an archived run (`popevit archive`): it keeps predictions, not weights, so only "
            f"`popevit compare`, `study` and `report` can read it; use the run it was archived from ({origin})"
        )
    weights = verify_weights(run_dir, meta)
    try:
        model = create_model(meta.name, **meta.kwargs)
    except TypeError as err:  # kwargs the model does not take: a hand-edited or foreign model.json
        raise ValueError(
            f"{shown(run_dir / META)}: model {meta.name!r} cannot be built from its kwargs ({err})"
        ) from None
    state = load_weights(weights, device=str(map_location))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(
            f"{run_dir / WEIGHTS} does not match model {meta.name!r}: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}; the artefact was written by another popevit version"
        )
    return model.to(map_location).eval(), meta
