"""``popevit predict``: a trained run (or its exported ONNX / torch.export file) on unlabelled images and volumes.

One path for every input: :mod:`popevit.serve.inputs` turns files into 2-D slices, each slice goes through the run's own
:func:`popevit.data.preprocess.preprocess_image` (read from ``model.json``, or from the exported file's metadata), and
:class:`popevit.serve.module.ServingModule` (eval transform + model + OOD scores) runs on the batch, in PyTorch or in
onnxruntime (:mod:`popevit.serve.backends`). Probabilities are temperature-scaled when ``popevit evaluate --calibrate``
fitted a temperature for the run's own test split (``RUN/eval/test-ts``), and every image gets the OOD flag of
:mod:`popevit.serve.ood`.

Outputs, in ``out``::

    predictions.csv    id, path, kind, volume, index, predicted, probability, p_<class>..., ood, flagged_by, scores
    predictions.json   the same per slice, per-volume summaries, the model, temperature and OOD flag used, and
                       every input that could not be read, with the reason
    explain/<method>/  with ``explain``: one overlay PNG per slice (original | model input | heatmap)

With an ``.onnx`` file only onnxruntime, numpy, Pillow (and pydicom/nibabel for those inputs) are imported: torch
never is, so each heavy import (torch, and the modules of popevit that import it) sits in the function that needs it.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from popevit.io import atomic_write_text, write_json
from popevit.serve.backends import ModelInfo, TorchBackend, load_backend, softmax
from popevit.serve.inputs import Failure, Skipped, Slice, iter_inputs, parse_slices

PREDICTIONS_CSV = "predictions.csv"
PREDICTIONS_JSON = "predictions.json"
NO_TUMOR = "notumor"
SCORE_NAMES = ("energy", "input", "contrast")  # the OOD scores, in the order ServingModule returns them


@dataclass
class PredictionSet:
    """Everything one prediction run produced."""

    info: ModelInfo
    records: list[dict[str, Any]]
    volumes: list[dict[str, Any]]
    failed: list[Failure]
    skipped: list[Skipped]
    tta: bool = False
    explain: str | None = None

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    def to_json(self) -> dict[str, Any]:
        i = self.info
        return {
            "format": "popevit-predictions/1",
            "model": {"source": i.source, "kind": i.kind, "name": i.name, "classes": i.classes, **i.record},
            "preprocess": i.preprocess.model_dump(mode="json"),
            "temperature": {"value": i.temperature, "source": i.temperature_source},
            "ood": i.ood.summary() if i.ood else {"available": False, "note": i.ood_note},
            "tta": self.tta,
            "explain": self.explain,
            "n_predicted": len(self.records),
            "n_failed": len(self.failed),
            "n_ood": int(sum(bool(r["ood"]) for r in self.records)),
            "predictions": self.records,
            "volumes": self.volumes,
            "failed": [{"path": f.path, "reason": f.reason} for f in self.failed],
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
        }


def tumour_classes(classes: Sequence[str]) -> list[str]:
    """The classes that mean a tumour: every class but ``notumor`` (every class when there is no ``notumor``)."""
    return [c for c in classes if c != NO_TUMOR] or list(classes)


def summarize_volumes(records: Sequence[dict[str, Any]], classes: Sequence[str]) -> list[dict[str, Any]]:
    """Per volume (NIfTI file, DICOM series, multi-frame file): counts, the most confident tumour slice (among the
    slices the OOD flag trusts, when any) and each class's maximum probability over the slices."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["volume"] is not None:
            groups.setdefault(r["volume"], []).append(r)
    tumour = tumour_classes(classes)
    out = []
    for volume, rows in groups.items():
        trusted = [r for r in rows if not r["ood"]] or rows
        best = max(trusted, key=lambda r: max(r["probabilities"][c] for c in tumour))
        best_class = max(tumour, key=lambda c: best["probabilities"][c])
        per_class = {}
        for c in classes:
            top = max(rows, key=lambda r, c=c: r["probabilities"][c])
            per_class[c] = {"probability": top["probabilities"][c], "index": top["index"], "id": top["id"]}
        out.append({
            "volume": volume,
            "path": rows[0]["path"],
            "n_slices": rows[0]["n_slices"],
            "n_predicted": len(rows),
            "n_ood": sum(bool(r["ood"]) for r in rows),
            "predicted_counts": dict(Counter(r["predicted"] for r in rows)),
            "most_confident_tumour_slice": {
                "id": best["id"], "index": best["index"], "class": best_class,
                "probability": best["probabilities"][best_class], "among": "trusted" if trusted is not rows else "all",
            },
            "max_per_class": per_class,
        })  # fmt: skip
    return out


class Predictor:
    """A model ready to predict: the backend, its preprocessing, temperature and OOD flag.

    Args:
        ref: run folder, ``.onnx`` or ``.pt2`` file.
        device: torch device for a run folder (default: CUDA when available).
        tta: average the probabilities over a horizontal flip (as ``popevit evaluate --tta``).
        explain: ``rollout``, ``grad-rollout`` or ``gradcam`` (run folders only).
        ood: fit the OOD flag when the run has none (run folders; exported files carry theirs).
        threads: CPU threads for torch or onnxruntime (default: theirs).
        echo: progress lines (fitting the OOD flag).
    """

    def __init__(
        self,
        ref: str | Path,
        *,
        device: str | None = None,
        tta: bool = False,
        explain: str | None = None,
        ood: bool = True,
        threads: int | None = None,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.backend = load_backend(ref, device=device, ood=ood, threads=threads, echo=echo)
        self.info = self.backend.info
        self.tta = tta
        self.explain: str | None = None
        if explain is not None:
            self.use_explanation(explain)

    def use_explanation(self, method: str) -> str:
        """Explain with ``method`` (``rollout``, ``grad-rollout``, ``gradcam``) from now on; returns its name."""
        if not isinstance(self.backend, TorchBackend):
            raise ValueError(
                f"--explain needs the run folder ({self.info.source} is an exported {self.info.kind} file and the "
                "explanation methods run the PyTorch model); pass the run folder the file was exported from"
            )
        from popevit.explain.explain import resolve_methods

        names = resolve_methods(method, self.backend.model)
        if len(names) != 1:
            raise ValueError(f"--explain takes one method (rollout, grad-rollout or gradcam), got {method!r}")
        self.explain = names[0]
        return self.explain

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    def predict_arrays(self, pre: np.ndarray) -> dict[str, Any]:
        """Preprocessed uint8 (B, S, S) -> ``proba`` (B, K), ``logits``, ``scores`` {name: (B,)}, ``ood`` (B,) and
        ``flagged_by`` (the scores above their threshold, per image)."""
        x = pre[:, None].astype(np.float32) / 255.0  # (B, 1, S, S) in [0, 1]
        logits, *rest = self.backend(x)
        scores = dict(zip(SCORE_NAMES, rest, strict=True))
        proba = softmax(logits, self.info.temperature)
        if self.tta:  # average probabilities over the horizontal flip; the OOD scores stay those of the image
            flipped = self.backend(np.ascontiguousarray(x[..., ::-1]))[0]
            proba = 0.5 * (proba + softmax(flipped, self.info.temperature))
        out: dict[str, Any] = {"proba": proba, "logits": logits, "scores": scores}
        if self.info.ood is not None:
            out["ood"], out["flagged_by"] = self.info.ood.flag(scores)
        else:
            out["ood"], out["flagged_by"] = np.zeros(len(x), dtype=bool), [[] for _ in range(len(x))]
        return out

    def run(
        self,
        inputs: Iterable[str | Path],
        *,
        slices: str = "all",
        batch_size: int = 32,
        explain_dir: Path | None = None,
    ) -> PredictionSet:
        """Predict every slice of ``inputs``; unreadable inputs are collected, never raised.

        Args:
            inputs: files and folders (see :func:`popevit.serve.inputs.iter_inputs`).
            slices: ``all``, ``middle`` or ``A:B`` within each volume.
            batch_size: slices per forward pass.
            explain_dir: folder for the overlay PNGs (with ``explain``).

        Returns:
            A :class:`PredictionSet`.
        """
        from popevit.data.preprocess import preprocess_image

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        cfg = self.info.preprocess
        records: list[dict[str, Any]] = []
        failed: list[Failure] = []
        skipped: list[Skipped] = []
        pending: list[tuple[Slice, np.ndarray]] = []
        for item in iter_inputs(list(inputs), cfg, slices):
            if isinstance(item, Failure):
                failed.append(item)
            elif isinstance(item, Skipped):
                skipped.append(item)
            else:
                try:
                    pending.append((item, preprocess_image(item.image, cfg)))
                except Exception as err:  # a decodable but degenerate image must not stop the others
                    failed.append(Failure(item.id, f"preprocessing failed ({type(err).__name__}: {err})"))
            if len(pending) >= batch_size:
                records += self._batch(pending, len(records), explain_dir)
                pending = []
        if pending:
            records += self._batch(pending, len(records), explain_dir)
        return PredictionSet(self.info, records, summarize_volumes(records, self.classes), failed, skipped,
                             self.tta, self.explain)  # fmt: skip

    def _batch(self, batch: list[tuple[Slice, np.ndarray]], start: int, explain_dir: Path | None) -> list[dict]:
        pre = np.stack([a for _, a in batch])  # (B, S, S) uint8
        out = self.predict_arrays(pre)
        overlays: list[str | None] = [None] * len(batch)
        if self.explain is not None and explain_dir is not None:
            folder = explain_dir / self.explain
            paths = [folder / f"{start + i:05d}_{_stem(s)}.png" for i, (s, _) in enumerate(batch)]
            overlays = [str(p) for p in self.save_overlays(batch, out["proba"], paths)]
        return self.records(batch, out, overlays)

    def records(
        self,
        batch: Sequence[tuple[Slice, np.ndarray]],
        out: dict[str, Any],
        overlays: Sequence[str | None] | None = None,
    ) -> list[dict[str, Any]]:
        """One JSON-able record per slice from :meth:`predict_arrays`' output."""
        proba = out["proba"]
        pred = proba.argmax(1)
        overlays = overlays or [None] * len(batch)
        return [
            {
                "id": s.id, "path": s.path, "kind": s.kind, "volume": s.volume, "index": s.index,
                "n_slices": s.n_slices, "window": s.window,
                "predicted": self.classes[int(pred[i])], "probability": float(proba[i, pred[i]]),
                "probabilities": {c: float(proba[i, k]) for k, c in enumerate(self.classes)},
                "ood": bool(out["ood"][i]), "flagged_by": list(out["flagged_by"][i]),
                "scores": {name: float(v[i]) for name, v in out["scores"].items()},
                "explanation": overlays[i],
            }
            for i, (s, _) in enumerate(batch)
        ]  # fmt: skip

    def save_overlays(
        self, batch: Sequence[tuple[Slice, np.ndarray]], proba: np.ndarray, paths: Sequence[Path]
    ) -> list[Path]:
        """Explain the predicted class of each slice and save original | model input | heatmap PNGs to ``paths``.

        Args:
            batch: ``(slice, preprocessed uint8 (S, S))`` pairs.
            proba: (B, K) probabilities (the explained class is the arg-max).
            paths: one PNG path per slice.
        """
        from popevit.data.decode import to_gray
        from popevit.explain import overlay
        from popevit.explain.inputs import Item

        if self.explain is None or not isinstance(self.backend, TorchBackend):
            raise RuntimeError("overlays need a run folder and an explanation method (Predictor(explain=...))")
        pre = np.stack([a for _, a in batch])
        pred = proba.argmax(1)
        maps = self.backend.explain(pre[:, None].astype(np.float32) / 255.0, pred, self.explain)  # (B, S, S)
        for i, ((s, a), path) in enumerate(zip(batch, paths, strict=True)):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            item = Item(s.id, -1, to_gray(s.image), a)
            overlay.save_explanation(Path(path), item, {self.explain: maps[i]}, proba[i], self.classes, int(pred[i]))
        return [Path(p) for p in paths]


def _stem(s: Slice) -> str:
    return Path(s.path).name.split(".")[0][:60] + (f"_{s.index}" if s.index is not None else "")


# ------------------------------------------------------------------------------------------------ output


def csv_text(result: PredictionSet) -> str:
    """``predictions.csv``: one row per slice."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "path", "kind", "volume", "index", "predicted", "probability",
                *[f"p_{c}" for c in result.classes], "ood", "flagged_by", *[f"{n}_score" for n in SCORE_NAMES],
                "explanation"])  # fmt: skip
    for r in result.records:
        w.writerow([
            r["id"], r["path"], r["kind"], r["volume"] or "", "" if r["index"] is None else r["index"],
            r["predicted"], f"{r['probability']:.6f}", *(f"{r['probabilities'][c]:.6f}" for c in result.classes),
            int(r["ood"]), "+".join(r["flagged_by"]), *(f"{r['scores'][n]:.6g}" for n in SCORE_NAMES),
            r["explanation"] or "",
        ])  # fmt: skip
    return buf.getvalue()


def write_predictions(result: PredictionSet, out: Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``predictions.csv`` and ``predictions.json`` into ``out`` (atomically; never over earlier ones unless
    ``overwrite``)."""
    out = Path(out)
    paths = (out / PREDICTIONS_CSV, out / PREDICTIONS_JSON)
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} already exists; pass another --out folder, or --overwrite to replace it")
    text = csv_text(result)
    atomic_write_text(paths[0], text)
    write_json(paths[1], result.to_json())
    return paths


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse before any work when ``out`` already holds predictions (and ``overwrite`` is off)."""
    for name in (PREDICTIONS_CSV, PREDICTIONS_JSON):
        if (Path(out) / name).exists() and not overwrite:
            raise FileExistsError(f"{Path(out) / name} already exists; pass another --out folder, or --overwrite")


def format_table(result: PredictionSet, max_rows: int = 40) -> str:
    """Plain-text table: slice, predicted class, every class probability, OOD flag (first ``max_rows`` rows)."""
    classes = result.classes
    ids = [r["id"] for r in result.records[:max_rows]]
    width = min(60, max([len("input"), *(len(i) for i in ids)]))
    cw = max(8, *(len(c) for c in classes))
    lines = [f"{'input':<{width}}  {'predicted':<{cw}}  " + "  ".join(f"{c:>{cw}}" for c in classes) + "  ood"]
    for r in result.records[:max_rows]:
        name = r["id"] if len(r["id"]) <= width else "..." + r["id"][-(width - 3) :]
        probs = "  ".join(f"{r['probabilities'][c]:>{cw}.3f}" for c in classes)
        flag = ("OOD (" + "+".join(r["flagged_by"]) + ")") if r["ood"] else "-"
        lines.append(f"{name:<{width}}  {r['predicted']:<{cw}}  {probs}  {flag}")
    if len(result.records) > max_rows:
        lines.append(f"... {len(result.records) - max_rows} more rows in {PREDICTIONS_CSV}")
    for v in result.volumes:
        best = v["most_confident_tumour_slice"]
        lines.append(
            f"volume {v['volume']}: {v['n_predicted']} of {v['n_slices']} slices, {v['n_ood']} flagged OOD; most "
            f"confident tumour slice {best['index']} ({best['class']} {best['probability']:.3f})"
        )
    return "\n".join(lines)


def predict(
    ref: str | Path,
    inputs: Sequence[str | Path],
    *,
    out: str | Path = "predictions",
    explain: str | None = None,
    tta: bool = False,
    batch_size: int = 32,
    device: str | None = None,
    slices: str = "all",
    overwrite: bool = False,
    threads: int | None = None,
    echo: Callable[[str], None] | None = None,
) -> PredictionSet:
    """Predict ``inputs`` with a run or exported model and write ``predictions.csv``/``.json`` into ``out``.

    Args:
        ref: run folder, ``.onnx`` or ``.pt2`` file.
        inputs: image files, folders, DICOM files or series folders, NIfTI volumes.
        out: output folder (refused when it already holds predictions, unless ``overwrite``).
        explain: ``rollout``, ``grad-rollout`` or ``gradcam``: one overlay PNG per slice in ``out/explain``.
        tta: average over a horizontal flip.
        batch_size: slices per forward pass.
        device: torch device (run folders).
        slices: ``all``, ``middle`` or ``A:B`` within each volume.
        overwrite: replace earlier predictions in ``out``.
        threads: CPU threads of the backend.
        echo: progress lines.

    Returns:
        The :class:`PredictionSet`; ``failed`` lists the inputs that could not be read.
    """
    if not inputs:
        raise ValueError("no inputs given; pass image files, folders, DICOM or NIfTI files")
    parse_slices(slices)
    out = Path(out)
    check_out(out, overwrite)
    predictor = Predictor(ref, device=device, tta=tta, explain=explain, threads=threads, echo=echo)
    result = predictor.run(inputs, slices=slices, batch_size=batch_size, explain_dir=out / "explain")
    write_predictions(result, out, overwrite=overwrite)
    return result
