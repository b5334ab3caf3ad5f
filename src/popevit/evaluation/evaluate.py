"""``popevit evaluate``: a run's saved model on a labelled image set -> predictions, metrics with CIs, plots.

The model is rebuilt from the run's portable artefact (``model.safetensors`` + ``model.json``) and fed with the
preprocessing saved there, so evaluation never needs Lightning or the training code. Data come through the data
layer, so any layout it reads works (a manifest split, or a folder such as the official Kaggle ``Testing`` set).

Outputs, in ``out`` (default ``RUN/eval/<tag>``, e.g. ``RUN/eval/test`` or ``RUN/eval/data-Testing-tta``)::

    predictions.csv            path, label, predicted, p_<class>...
    metrics.json               every metric with a 95% percentile-bootstrap CI (see popevit.evaluation.metrics)
    confusion_matrix.png, roc.png, reliability.png, prob_histograms.png
    dedup_*.png                the same figures on the de-duplicated subset (with ``dedup_against``)
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from popevit.artifact import WEIGHTS, file_sha256, load_artifact
from popevit.data import load_samples
from popevit.data.cache import default_cache_dir
from popevit.data.checks import Skip, write_skipped
from popevit.data.dataset import ImageDataset
from popevit.data.dedup import NEAR_THRESHOLD, fingerprint_files, near_pairs
from popevit.evaluation.calibration import apply_temperature, fit_temperature, nll, temperature_at_bound
from popevit.evaluation.describe import model_label, source_label
from popevit.evaluation.labelmap import LabelMap, LabelMapError
from popevit.evaluation.metrics import metrics_with_ci, point_metrics
from popevit.evaluation.plots import figure_title, plot_all
from popevit.evaluation.predictions import PREDICTIONS, Predictions, predict_proba, resolve_device
from popevit.evaluation.source import EVAL_DIR, RUN_MANIFEST, EvalSource, load_eval_samples, load_mapped_samples
from popevit.io import jsonable, write_json
from popevit.serve.card import write_model_card

__all__ = [  # EVAL_DIR is re-exported: archived runs and the report name eval folders by it
    "CI_LEVEL",
    "CI_METHOD",
    "EVAL_DIR",
    "METRICS",
    "SKIPPED",
    "ClassMismatchError",
    "evaluate_run",
    "format_metrics",
    "jsonable",
    "novel_mask",
    "resize_preprocess",
    "summarize",
    "write_json",
]

METRICS = "metrics.json"
SKIPPED = "skipped.csv"
CI_METHOD = "percentile"
CI_LEVEL = 0.95


ClassMismatchError = LabelMapError  # the evaluation data's classes do not fit the model's (no label map fits them)


def resize_preprocess(meta: Any, model: Any, img_size: int | None) -> Any:
    """The run's preprocessing at input size ``img_size`` (resolution extrapolation), checked against the model.

    Returns ``meta.preprocess`` unchanged when ``img_size`` is None or the training size.
    """
    if img_size is None or img_size == meta.preprocess.img_size:
        return meta.preprocess
    patch = meta.kwargs.get("patch_size") or getattr(model, "patch_size", None)
    if patch and img_size % int(patch):
        raise ValueError(
            f"--img-size {img_size} is not a multiple of the model's patch size {patch}; "
            f"use e.g. {img_size - img_size % int(patch)} or {img_size + int(patch) - img_size % int(patch)}"
        )
    return meta.preprocess.model_copy(update={"img_size": int(img_size)})


def novel_mask(
    paths: list[str], against: str | Path, cache_dir: str | Path | None = None
) -> tuple[np.ndarray, dict[str, Any]]:
    """Which evaluation images have no exact or near duplicate in ``against`` (a folder, or a manifest's train split).

    Uses the data layer's fingerprints, so "duplicate" means what the splitter and the leakage audit mean: the same
    bytes (SHA-256), or a canonical 256-bit pHash within ``popevit.data.dedup.NEAR_THRESHOLD`` bits.

    Args:
        paths: evaluation image paths.
        against: training image folder, or a manifest CSV whose ``train`` split is the reference.
        cache_dir: fingerprint cache root (``None``: the data layer's default cache).

    Returns:
        ``(mask, info)``: (n,) bool, True for images with no duplicate in ``against``; info for ``metrics.json``.
    """
    against = Path(against)
    if against.is_dir():
        ref = load_samples(data=against)
    elif against.is_file():
        ref = load_samples(manifest=against, split="train")
    else:
        raise FileNotFoundError(f"--dedup-against {str(against)!r} is neither an image folder nor a manifest file")
    cache = default_cache_dir(Path(cache_dir) if cache_dir is not None else None)
    fps = fingerprint_files([Path(p) for p in paths], cache_dir=cache)
    ref_fps = fingerprint_files([Path(p) for p in ref.paths], cache_dir=cache)
    ref_hashes = {fp.content_hash for fp in ref_fps if fp.content_hash}
    exact = np.array([bool(fp.content_hash) and fp.content_hash in ref_hashes for fp in fps], dtype=bool)
    near = np.zeros(len(fps), dtype=bool)
    for i, _, _ in near_pairs(fps, ref_fps, threshold=NEAR_THRESHOLD):
        near[i] = True
    mask = ~(exact | near)
    info = {
        "against": str(against),
        "n_reference": len(ref.paths),
        "n_exact_duplicates": int(exact.sum()),
        "n_near_duplicates": int((near & ~exact).sum()),
        "n_removed": int((~mask).sum()),
        "near_threshold_bits": NEAR_THRESHOLD,
    }
    return mask, info


def summarize(preds: Predictions, n_boot: int, seed: int) -> dict[str, Any]:
    """``n``, per-class counts and every metric with its CI for one set of predictions."""
    counts = Counter(preds.classes[i] for i in preds.y)
    return {
        "n": len(preds.paths),
        "counts": {c: counts.get(c, 0) for c in preds.classes},
        "metrics": metrics_with_ci(preds.y, preds.proba, preds.classes, n_boot=n_boot, seed=seed, level=CI_LEVEL),
    }


def _calibration(
    run_dir: Path, classes: list[str], paths: list[str], predict: Callable[[list[str], np.ndarray], np.ndarray]
) -> dict[str, Any]:
    """The ``calibration`` record: ``T`` fitted on the run's validation split, the validation NLL before and after,
    and ``at_bound`` (T not identified: the validation split is separated perfectly, and a warning says so).
    Refused when ``paths`` include validation images."""
    val_paths, val_y, _ = load_eval_samples(run_dir, classes, EvalSource(split="val"))
    overlap = len({Path(p).resolve() for p in val_paths} & {Path(p).resolve() for p in paths})
    if overlap:
        raise ValueError(
            f"--calibrate fits the temperature on the run's validation split, and {overlap} of the {len(paths)} "
            "images to evaluate are validation images: evaluate another split (e.g. --split test) or drop "
            "--calibrate"
        )
    calibration: dict[str, Any] = {
        "method": "temperature (Guo et al. 2017)",
        "fit_on": {"split": "val", "n": len(val_paths)},
    }
    val_proba = predict(val_paths, val_y)
    t = fit_temperature(val_y, val_proba)
    calibration["temperature"] = t
    calibration["at_bound"] = temperature_at_bound(t)
    calibration["val_nll"] = {"before": nll(val_y, val_proba), "after": nll(val_y, val_proba, t)}
    return calibration


def _scored(
    proba: np.ndarray, y: np.ndarray, classes: list[str], lmap: LabelMap, calibration: dict[str, Any] | None
) -> np.ndarray:
    """(n, K) model probabilities -> (n, T) probabilities of the label map's targets, temperature-scaled first when
    calibrating (the uncalibrated figures then go into ``calibration``)."""
    if calibration is not None:
        raw = point_metrics(y, lmap.collapse(proba, classes), lmap.targets)
        calibration["uncalibrated"] = {k: raw[k] for k in ("ece", "log_loss", "auroc_macro")}
        proba = apply_temperature(proba, calibration["temperature"])
    return lmap.collapse(proba, classes)  # (n, T): the sum of each target's model classes


def _figures_and_dedup(
    preds: Predictions,
    against: str | Path | None,
    out_dir: Path,
    *,
    what: tuple[str, str],
    plots: bool,
    n_boot: int,
    seed: int,
    cache_dir: Any,
) -> dict[str, Any]:
    """The evaluation's figures (``plots``, titled with ``what``: the model and the data) and, with ``against``,
    every metric again on the images with no duplicate in it (``dedup``, with its own figures when some went)."""
    out: dict[str, Any] = {}
    if plots:
        figures = plot_all(preds.y, preds.proba, preds.classes, out_dir, title=figure_title(*what, len(preds.y)))
        out["plots"] = {k: p.name for k, p in figures.items()}
    if against is None:
        return out
    mask, info = novel_mask(preds.paths, against, cache_dir=cache_dir)
    sub = preds.subset(mask)
    out["dedup"] = record = {**info, **(summarize(sub, n_boot, seed) if mask.any() else {"n": 0, "metrics": {}})}
    if plots and 0 < len(sub.paths) < len(preds.paths):  # identical figures when nothing was removed
        title = figure_title(what[0], f"{what[1]}, no duplicate in {Path(against).name}", len(sub.y))
        figures = plot_all(sub.y, sub.proba, preds.classes, out_dir, prefix="dedup_", title=title)
        record["plots"] = {k: p.name for k, p in figures.items()}
    return out


def _write_records(run_dir: Path, out_dir: Path, result: dict[str, Any], skipped: list[list[str]]) -> None:
    """``metrics.json``; ``skipped.csv``: every file not evaluated, with the reason (also in ``metrics.json``); and
    the run's model card, which shows every evaluation of the run, this one included."""
    write_json(out_dir / METRICS, result)
    if skipped:
        write_skipped(out_dir / SKIPPED, [Skip(Path(p), reason) for p, reason in skipped])
    elif (out_dir / SKIPPED).is_file():  # an earlier evaluation's list, of files this one used
        (out_dir / SKIPPED).unlink()
    write_model_card(run_dir)


def evaluate_run(
    run_dir: str | Path,
    source: EvalSource | None = None,
    *,
    out: str | Path | None = None,
    dedup_against: str | Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
    device: str | None = None,
    plots: bool = True,
    cache_dir: str | Path | None = None,
    dedup: bool = True,
    **source_fields: Any,
) -> dict[str, Any]:
    """Evaluate a run's model and write predictions, metrics with bootstrap CIs and plots.

    Args:
        run_dir: run directory holding ``model.safetensors`` + ``model.json``.
        source: what to evaluate on and how (:class:`popevit.evaluation.source.EvalSource`; default the run's own
            manifest's ``test`` split). With a ``label_map`` the model's probabilities are summed per target, then
            scored; with ``calibrate`` ``metrics.json`` gains a ``calibration`` record (:func:`_calibration`).
        out: output folder; default ``RUN/eval/<tag>`` (:meth:`EvalSource.tag`).
        dedup_against: training folder or manifest (its ``train`` split); every metric is also reported on the
            subset of images with no exact or near duplicate there.
        n_boot: bootstrap resamples for the CIs (>= 1000 for reported numbers).
        seed: bootstrap seed.
        batch_size: inference batch size.
        device: torch device; default CUDA when available.
        plots: write the PNG figures.
        cache_dir: decode/fingerprint cache folder passed to the data layer (``None``: its default).
        dedup: on external data (anything but the run's own manifest) with no ``dedup_against``, also report the
            images with no exact or near duplicate in the run's own training split.
        **source_fields: the fields of ``source`` as keywords (``data=``, ``split=``, ...), instead of ``source``.

    Returns:
        The content of ``metrics.json`` (with ``out`` added).
    """
    source, run_dir = EvalSource.of(source, **source_fields), Path(run_dir)
    resolve_device(device)  # a bad --device is refused before anything is read or written
    model, meta = load_artifact(run_dir)
    source = source.resolved()
    classes = list(meta.classes)
    paths, y, info, lmap = load_mapped_samples(run_dir, classes, source)
    if dedup and dedup_against is None and info["external"] and (run_dir / RUN_MANIFEST).is_file():
        dedup_against = run_dir / RUN_MANIFEST  # external data: how much of it did the model train on?
    preprocess = resize_preprocess(meta, model, source.img_size)
    out_dir = Path(out) if out is not None else source.eval_dir(run_dir)

    def predict(image_paths: list[str], labels: np.ndarray) -> np.ndarray:
        dataset = ImageDataset([Path(p) for p in image_paths], labels.tolist(), preprocess, cache_dir=cache_dir)
        return predict_proba(model, dataset, batch_size=batch_size, tta=source.tta, device=device)

    calibration = _calibration(run_dir, classes, paths, predict) if source.calibrate else None
    out_dir.mkdir(parents=True, exist_ok=True)
    proba = _scored(predict(paths, y), y, classes, lmap, calibration)  # (n, K) in the model's classes -> (n, T)
    preds = Predictions(paths, y, proba, lmap.targets)
    preds.save(out_dir / PREDICTIONS)
    result: dict[str, Any] = {
        "run": str(run_dir),
        "model": {"name": meta.name, "kwargs": meta.kwargs, "weights_sha256": file_sha256(run_dir / WEIGHTS)},
        "classes": lmap.targets,
        "model_classes": classes,
        "source": info,
        "tta": source.tta,
        "img_size": preprocess.img_size,
        "bootstrap": {"method": CI_METHOD, "level": CI_LEVEL, "n_boot": n_boot, "seed": seed, "unit": "image"},
        **summarize(preds, n_boot, seed),
    }
    if not lmap.identity or lmap.rules:
        result["label_map"] = lmap.to_json()
    if calibration is not None:
        result["calibration"] = calibration
    what = model_label(meta.name, meta.kwargs), source_label(info)  # named in every figure's title
    opts = {"plots": plots, "n_boot": n_boot, "seed": seed, "cache_dir": cache_dir, "what": what}
    result.update(_figures_and_dedup(preds, dedup_against, out_dir, **opts))
    _write_records(run_dir, out_dir, result, info["skipped"])
    return {**jsonable(result), "out": str(out_dir)}


def format_metrics(result: dict[str, Any], names: list[str] | None = None) -> str:
    """Plain-text table ``metric  value  [lo, hi]`` (with the de-duplicated subset side by side when present)."""
    dedup = result.get("dedup")
    names = names or list(result["metrics"])
    header = f"{'metric':<26}{'all (n=' + str(result['n']) + ')':>28}"
    if dedup:
        header += f"{'no duplicate in train (n=' + str(dedup['n']) + ')':>40}"
    lines = [header]

    def cell(m: dict[str, float] | None, width: int) -> str:
        if m is None:
            return " " * width
        if m["value"] is None or m["lo"] is None:
            return "n/a".rjust(width)
        return f"{m['value']:.4f} [{m['lo']:.4f}, {m['hi']:.4f}]".rjust(width)

    for name in names:
        line = f"{name:<26}{cell(result['metrics'].get(name), 28)}"
        if dedup:
            line += cell(dedup["metrics"].get(name), 40)
        lines.append(line)
    return "\n".join(lines)
