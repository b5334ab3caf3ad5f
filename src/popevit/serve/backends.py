"""How ``popevit predict`` runs a model: a run folder in PyTorch, an ONNX file in onnxruntime, a torch.export program.

Every backend takes (B, 1, S, S) float32 inputs in [0, 1] and returns the outputs of
:class:`popevit.serve.module.ServingModule` (logits and the OOD scores), and knows its model (:class:`ModelInfo`):
classes, preprocessing, the temperature of ``popevit evaluate --calibrate`` and the OOD flag.

Each heavy import (torch, onnxruntime, the artefact loader and the explanation methods, which import torch) sits in
the backend that needs it: with an ``.onnx`` file torch is never imported.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from popevit.config import PreprocessConfig
from popevit.serve.ood import OODDetector

ONNX_FORMAT = "popevit-onnx/1"
META_KEY = "popevit.json"  # metadata_props key (ONNX) / extra file (torch.export) holding the model's record


# ------------------------------------------------------------------------------------------------ temperature


def run_temperature(run_dir: str | Path, weights_sha256: str | None = None) -> tuple[float | None, str]:
    """The temperature that ``popevit evaluate RUN --calibrate`` fitted for the run's own test split.

    Returns:
        ``(T, source)``, or ``(None, why not)`` when there is none, it sits at its search bound (not identified),
        or it was fitted for other weights.
    """
    path = Path(run_dir) / "eval" / "test-ts" / "metrics.json"
    if not path.is_file():
        return None, (
            f"none: {path} does not exist (run `popevit evaluate {run_dir} --calibrate`); probabilities are "
            "uncalibrated softmax"
        )
    metrics = json.loads(path.read_text())
    cal = metrics.get("calibration") or {}
    t = cal.get("temperature")
    if t is None:
        return None, f"none: {path} has no calibration record; probabilities are uncalibrated softmax"
    if cal.get("at_bound"):
        return None, f"none: the temperature in {path} sits at its search bound (not identified); uncalibrated"
    fitted_for = (metrics.get("model") or {}).get("weights_sha256")
    if weights_sha256 is not None and fitted_for is not None and fitted_for != weights_sha256:
        return None, f"none: {path} was fitted for other weights (re-run `popevit evaluate --calibrate`); uncalibrated"
    n = (cal.get("fit_on") or {}).get("n")
    return float(t), f"{path} (fitted on {n} validation images)"


def softmax(logits: np.ndarray, temperature: float | None = None) -> np.ndarray:
    """Row-wise softmax of (n, K) logits divided by ``temperature`` (1 when None), in float64."""
    z = np.asarray(logits, dtype=np.float64) / (temperature or 1.0)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------------ backends


@dataclass
class ModelInfo:
    """What every backend knows of its model."""

    source: str
    kind: str  # "run", "onnx" or "pt2"
    name: str
    classes: list[str]
    preprocess: PreprocessConfig
    temperature: float | None
    temperature_source: str
    ood: OODDetector | None
    ood_note: str | None
    record: dict[str, Any] = field(default_factory=dict)


class TorchBackend:
    """A run folder: the model rebuilt from ``model.safetensors`` + ``model.json``, wrapped in ServingModule."""

    def __init__(
        self,
        run_dir: Path,
        *,
        device: str | None = None,
        ood: bool = True,
        threads: int | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        import torch

        from popevit.artifact import ARCHIVE, META, WEIGHTS, file_sha256, load_artifact
        from popevit.evaluation.predictions import resolve_device
        from popevit.serve.module import ServingModule
        from popevit.serve.ood_fit import ensure_ood

        if threads is not None:
            torch.set_num_threads(threads)
        if not (run_dir / META).is_file():
            raise FileNotFoundError(
                f"{run_dir} is not a popevit run: {run_dir / META} not found; pass a run folder made by "
                "`popevit train` or a model exported by `popevit export`"
            )
        if not (run_dir / WEIGHTS).is_file() and not (run_dir / ARCHIVE).is_file():
            raise FileNotFoundError(
                f"{run_dir} has no weights: {run_dir / WEIGHTS} not found (training did not finish, or the weights "
                f"were removed); finish or resume the run with `popevit train ... --out {run_dir} --resume`, or pass "
                "another run"
            )
        self.device = resolve_device(device)
        model, meta = load_artifact(run_dir, map_location=self.device)
        if meta.extra.get("dataset", "folder") != "folder":
            raise ValueError(
                f"{run_dir} was trained on {meta.extra['dataset']} (channel statistics, not per-image "
                "standardisation): popevit predict serves MRI runs trained on image folders"
            )
        sha = file_sha256(run_dir / WEIGHTS)
        temperature, t_source = run_temperature(run_dir, sha)
        detector, note = ensure_ood(run_dir, device=str(self.device), echo=echo) if ood else (None, "not requested")
        self.model = model
        self.module = ServingModule(model, meta.preprocess, detector.density if detector else None).to(self.device)
        self.info = ModelInfo(
            source=str(run_dir), kind="run", name=meta.name, classes=list(meta.classes), preprocess=meta.preprocess,
            temperature=temperature, temperature_source=t_source, ood=detector, ood_note=note,
            record={"run": str(run_dir), "model": {"name": meta.name, "kwargs": meta.kwargs}, "weights_sha256": sha},
        )  # fmt: skip

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """(B, 1, S, S) float32 in [0, 1] -> logits (B, K) and the (B,) scores of ``ServingModule.forward``."""
        import torch

        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
        return tuple(o.float().cpu().numpy() for o in out)  # type: ignore[return-value]

    def explain(self, x: np.ndarray, target: np.ndarray, method: str) -> np.ndarray:
        """(B, S, S) heatmaps of ``method`` for classes ``target`` on the model input of ``x``."""
        import torch

        from popevit.explain.methods import explain_batch

        xt = self.module.transform(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
        maps = explain_batch(self.model, xt, torch.as_tensor(target, dtype=torch.long), method)
        return maps.numpy()


def read_metadata(path: Path, props: dict[str, str]) -> dict[str, Any]:
    """The popevit record of an exported file from its metadata, or a ValueError naming the file and the fix."""
    raw = props.get(META_KEY)
    if raw is None:
        raise ValueError(
            f"{path} has no popevit metadata (no {META_KEY!r} entry): it was not written by `popevit export`, so its "
            "classes and preprocessing are unknown; export a run with `popevit export RUN --format onnx`"
        )
    record = json.loads(raw)
    if record.get("format") != ONNX_FORMAT:
        raise ValueError(f"{path} has popevit format {record.get('format')!r}, expected {ONNX_FORMAT!r}; export again")
    return record


def info_from_record(path: Path, kind: str, record: dict[str, Any]) -> ModelInfo:
    """:class:`ModelInfo` of an exported file from its embedded record."""
    ood = record.get("ood")
    detector = OODDetector({k: float(v) for k, v in ood["thresholds"].items()}, ood) if ood else None
    temp = record.get("temperature") or {}
    return ModelInfo(
        source=str(path), kind=kind, name=record["model"]["name"], classes=list(record["classes"]),
        preprocess=PreprocessConfig.model_validate(record["preprocess"]), temperature=temp.get("value"),
        temperature_source=temp.get("source", "none"), ood=detector,
        ood_note=None if detector else record.get("ood_note", "no OOD flag was fitted before export"),
        record={"file": str(path), "model": record["model"], "weights_sha256": record.get("weights_sha256")},
    )  # fmt: skip


class OnnxBackend:
    """An ONNX file written by ``popevit export``, run by onnxruntime (no torch)."""

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; export one with `popevit export RUN --format onnx`")
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # errors only: its warnings would interleave with the table
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own Fail/InvalidProtobuf types
            raise ValueError(
                f"{path} is not a readable ONNX model ({type(err).__name__}: {' '.join(str(err).split())[:200]}); "
                "export it again with `popevit export RUN --format onnx`"
            ) from None
        record = read_metadata(path, self.session.get_modelmeta().custom_metadata_map)
        self.info = info_from_record(path, "onnx", record)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        return tuple(self.session.run(None, {self.input: np.ascontiguousarray(x, dtype=np.float32)}))


class ProgramBackend:
    """A torch.export program (``.pt2``) written by ``popevit export --format pt2``."""

    def __init__(self, path: Path, *, threads: int | None = None) -> None:
        import torch

        if threads is not None:
            torch.set_num_threads(threads)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; export one with `popevit export RUN --format pt2`")
        extra = {META_KEY: ""}
        try:
            program = torch.export.load(str(path), extra_files=extra)
        except Exception as err:
            raise ValueError(
                f"{path} is not a readable torch.export program ({type(err).__name__}: {str(err)[:200]}); "
                "export it again with `popevit export RUN --format pt2`"
            ) from None
        self.module = program.module()
        self.info = info_from_record(path, "pt2", read_metadata(path, {k: v for k, v in extra.items() if v}))

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        import torch

        with torch.inference_mode():
            out = self.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
        return tuple(o.float().numpy() for o in out)  # type: ignore[return-value]


def load_backend(
    ref: str | Path,
    *,
    device: str | None = None,
    ood: bool = True,
    threads: int | None = None,
    echo: Callable[[str], None] | None = None,
) -> TorchBackend | OnnxBackend | ProgramBackend:
    """A run folder, an ``.onnx`` file or a ``.pt2`` file -> the backend that runs it."""
    ref = Path(ref)
    if ref.is_dir():
        return TorchBackend(ref, device=device, ood=ood, threads=threads, echo=echo)
    if ref.suffix.lower() == ".onnx":
        return OnnxBackend(ref, threads=threads)
    if ref.suffix.lower() == ".pt2":
        return ProgramBackend(ref, threads=threads)
    if not ref.exists():
        raise FileNotFoundError(f"{ref} not found; pass a run folder or a model exported by `popevit export`")
    raise ValueError(f"{ref} is neither a run folder nor an exported model (.onnx, .pt2); pass one of those")
