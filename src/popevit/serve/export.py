"""``popevit export``: a run -> one self-describing file, ONNX or torch.export, that ``popevit predict`` can run.

The exported graph is :class:`popevit.serve.module.ServingModule`: input ``image``, float32 (B, 1, S, S) in [0, 1]
(the output of :func:`popevit.data.preprocess.preprocess_image` divided by 255); outputs ``logits`` (B, K) and the
OOD scores ``energy``, ``input_score`` and ``contrast_score`` (B,) each. The eval transform (per-image
standardisation, channel replication) is inside the graph, so a consumer needs only numpy and Pillow for the
preprocessing. The batch axis is dynamic; the image side is fixed at the run's training size (or ``img_size``),
because every positional encoding builds its tables for the patch grid in Python.

- **ONNX** (opset 18 by default, >= 17): ``torch.onnx.export(dynamo=True)``. The record below is stored in the
  model's ``metadata_props`` under ``popevit.json``; each part is also under its own key (``popevit.classes``,
  ``popevit.preprocess``, ``popevit.temperature``, ``popevit.ood``, ``popevit.model_card``) for other tools.
- **pt2**: ``torch.export`` (the successor of TorchScript; ``torch.jit.script`` cannot compile the positional-
  encoding interface the ViT passes to every block, and TorchScript is deprecated in this torch). Saved with
  ``torch.export.save``, the record as the extra file ``popevit.json``; load with ``torch.export.load(path)
  .module()``.

The record: format, classes, preprocessing, the model (name, kwargs, weights sha256), the temperature that
``predict`` would use, the OOD thresholds (fitted on the run's data when missing; their input model is in the
graph), the model card (``model_card.json``), and the input/output names.

Every export is checked before it is written: the file's outputs on a random batch must equal PyTorch's within
1e-4.

Each heavy import (torch, onnx, onnxruntime, and the modules of popevit that import torch) sits in the function that
needs it, so that ``popevit --help`` and the torch-free ONNX path of ``predict`` do not pay for them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from popevit.serve.backends import META_KEY, ONNX_FORMAT, run_temperature

DEFAULT_OPSET = 18
FORMATS = ("onnx", "pt2")
Format = Literal["onnx", "pt2"]
PARITY_ATOL = 1e-4
MAX_BATCH = 4096


@dataclass
class ExportResult:
    """What :func:`export_run` wrote."""

    path: Path
    format: str
    record: dict[str, Any]
    max_abs_diff: float


def normalize_format(fmt: str) -> Format:
    """``onnx`` or ``pt2``; ``torchscript`` means pt2 (torch.export, TorchScript's successor)."""
    f = fmt.strip().lower()
    if f in ("torchscript", "torch.export", "torch-export", "pt2"):
        return "pt2"
    if f == "onnx":
        return "onnx"
    raise ValueError(f"--format {fmt!r} is not supported; use onnx or pt2 (torch.export; also accepted as torchscript)")


def serving_module(run_dir: Path, *, img_size: int | None = None, ood: bool = True, echo=None):
    """The run's :class:`ServingModule` on CPU and its record (see the module docstring)."""
    from popevit.artifact import META, WEIGHTS, file_sha256, load_artifact
    from popevit.evaluation.evaluate import resize_preprocess
    from popevit.serve.module import OUTPUTS, ServingModule
    from popevit.serve.ood_fit import ensure_ood

    run_dir = Path(run_dir)
    if not (run_dir / META).is_file():
        raise FileNotFoundError(f"{run_dir} is not a popevit run ({run_dir / META} not found); pass a run folder")
    if not (run_dir / WEIGHTS).is_file():
        raise FileNotFoundError(
            f"{run_dir} has no weights ({run_dir / WEIGHTS} not found): training did not finish or they were removed; "
            "export a finished run"
        )
    model, meta = load_artifact(run_dir)
    if meta.extra.get("dataset", "folder") != "folder":
        raise ValueError(
            f"{run_dir} was trained on {meta.extra['dataset']} (channel statistics, not per-image standardisation): "
            "popevit export serves MRI runs trained on image folders"
        )
    preprocess = resize_preprocess(meta, model, img_size)
    detector, note = ensure_ood(run_dir, device="cpu", echo=echo) if ood else (None, "not requested at export")
    density = detector.density if detector is not None else None
    if density is not None and preprocess.img_size % density.pool:
        density, detector = None, None
        note = f"the OOD input model was fitted at {meta.preprocess.img_size} px and does not apply at {img_size} px"
    sha = file_sha256(run_dir / WEIGHTS)
    temperature, t_source = run_temperature(run_dir, sha)
    from popevit.serve.card import CARD_JSON, write_model_card

    write_model_card(run_dir)  # refreshed, so that the embedded card names the OOD flag just fitted
    card_path = run_dir / CARD_JSON
    card = json.loads(card_path.read_text()) if card_path.is_file() else None
    record = {
        "format": ONNX_FORMAT,
        "classes": list(meta.classes),
        "preprocess": preprocess.model_dump(mode="json"),
        "model": {"name": meta.name, "kwargs": meta.kwargs, "run": str(run_dir.resolve())},
        "weights_sha256": sha,
        "temperature": {"value": temperature, "source": t_source},
        "ood": detector.summary() if detector is not None else None,
        "ood_note": note,
        "model_card": card,
        "input": {"name": "image", "shape": ["batch", 1, preprocess.img_size, preprocess.img_size],
                  "dtype": "float32", "range": [0.0, 1.0],
                  "made_by": "popevit.data.preprocess.preprocess_image(img, preprocess) / 255"},
        "outputs": list(OUTPUTS),
    }  # fmt: skip
    return ServingModule(model, preprocess, density).eval(), record


def _example(img_size: int, batch: int = 2, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 1, img_size, img_size, generator=g)


def _reference(module, x) -> list[np.ndarray]:
    import torch

    with torch.inference_mode():
        return [o.float().numpy() for o in module(x)]


def _max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    diffs = []
    for x, y in zip(a, b, strict=True):
        both_nan = np.isnan(x) & np.isnan(y)
        diffs.append(float(np.nanmax(np.where(both_nan, 0.0, np.abs(x - y)))) if x.size else 0.0)
    return max(diffs)


def export_onnx(module, record: dict[str, Any], out: Path, *, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``module`` (a ServingModule) to ONNX with a dynamic batch axis and the record in its metadata."""
    import onnx
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from popevit.io import atomic_write_bytes, jsonable
    from popevit.serve.module import OUTPUTS

    if opset < 17:
        raise ValueError(f"opset {opset} is too old; use 17 or newer (LayerNormalization needs 17)")
    size = record["preprocess"]["img_size"]
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    # The math kernel: the exporter's decomposition of the fused CPU attention with a bias (rel_bias) yields a
    # tensor it cannot view; the math path exports for every encoding, with the same numbers.
    with sdpa_kernel(SDPBackend.MATH), torch.no_grad():
        program = torch.onnx.export(
            module, (_example(size),), None, dynamo=True, input_names=["image"], output_names=list(OUTPUTS),
            opset_version=opset, dynamic_shapes={"x": {0: batch}}, external_data=False, verbose=False,
        )  # fmt: skip
    proto = program.model_proto
    meta = {
        META_KEY: json.dumps(jsonable(record)),
        "popevit.classes": json.dumps(record["classes"]),
        "popevit.preprocess": json.dumps(record["preprocess"]),
        "popevit.temperature": json.dumps(jsonable(record["temperature"])),
        "popevit.ood": json.dumps(jsonable(record["ood"])),
        "popevit.model_card": json.dumps(jsonable(record["model_card"])),
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "popevit"
    proto.doc_string = f"popevit {record['model']['name']} -> {', '.join(record['classes'])}"
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    return atomic_write_bytes(out, data)


def export_pt2(module, record: dict[str, Any], out: Path) -> Path:
    """Write ``module`` with ``torch.export`` (dynamic batch) and the record as the extra file ``popevit.json``."""
    import torch

    from popevit.io import atomic_write, jsonable

    size = record["preprocess"]["img_size"]
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with torch.no_grad():
        program = torch.export.export(module, (_example(size),), dynamic_shapes={"x": {0: batch}}, strict=False)
    extra = {META_KEY: json.dumps(jsonable(record))}
    return atomic_write(out, lambda tmp: torch.export.save(program, tmp, extra_files=extra), keep_suffix=True)


def run_exported(path: Path, x: np.ndarray) -> list[np.ndarray]:
    """Outputs of an exported file on ``x`` (B, 1, S, S): onnxruntime for ``.onnx``, torch.export for ``.pt2``."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return [np.asarray(o) for o in sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})]
    import torch

    mod = torch.export.load(str(path)).module()
    with torch.inference_mode():
        return [o.float().numpy() for o in mod(torch.from_numpy(x))]


def export_run(
    run_dir: str | Path,
    fmt: str = "onnx",
    out: str | Path | None = None,
    *,
    img_size: int | None = None,
    opset: int = DEFAULT_OPSET,
    ood: bool = True,
    overwrite: bool = False,
    echo: Callable[[str], None] | None = None,
) -> ExportResult:
    """Export a run to ONNX or torch.export, embed its record, and check the file against PyTorch.

    Args:
        run_dir: a finished run.
        fmt: ``onnx`` or ``pt2`` (``torchscript`` is accepted for pt2).
        out: output file (default ``RUN/model.onnx`` or ``RUN/model.pt2``).
        img_size: export at another input size (ViTs: a multiple of the patch size); default the training size.
        opset: ONNX opset (>= 17).
        ood: fit the OOD flag first when the run has none (skipped, with a note, when its images are unreadable).
        overwrite: replace an existing ``out``.
        echo: progress lines.

    Returns:
        An :class:`ExportResult` with the largest absolute difference to PyTorch on a random batch.

    Raises:
        RuntimeError: the exported file disagrees with PyTorch by more than 1e-4 (it is removed).
    """
    f = normalize_format(fmt)
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / f"model.{f}"
    if out.suffix != f".{f}":
        raise ValueError(f"--out {out} should end in .{f} for --format {f} (popevit predict reads the suffix)")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass another --out or --overwrite")
    module, record = serving_module(run_dir, img_size=img_size, ood=ood, echo=echo)
    if f == "onnx":
        export_onnx(module, record, out, opset=opset)
    else:
        export_pt2(module, record, out)
    x = _example(record["preprocess"]["img_size"], batch=3, seed=1)
    diff = _max_diff(_reference(module, x), run_exported(out, x.numpy()))
    if not diff <= PARITY_ATOL:
        out.unlink(missing_ok=True)
        raise RuntimeError(
            f"the exported {f} model differs from PyTorch by {diff:.3g} (> {PARITY_ATOL}); nothing was written. "
            "This is a bug in the export of this model: report it with the run's model.json"
        )
    return ExportResult(out, f, record, diff)
