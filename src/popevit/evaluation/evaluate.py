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

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from popevit.evaluation.calibration import apply_temperature, fit_temperature, nll, temperature_at_bound
from popevit.evaluation.describe import model_label, source_label
from popevit.evaluation.metrics import metrics_with_ci, point_metrics
from popevit.evaluation.plots import figure_title, plot_all
from popevit.evaluation.predictions import PREDICTIONS, Predictions, predict_proba

METRICS = "metrics.json"
EVAL_DIR = "eval"
CI_METHOD = "percentile"
CI_LEVEL = 0.95


class ClassMismatchError(ValueError):
    """The evaluation data's classes are not the model's classes."""


def eval_tag(
    data: str | Path | None,
    manifest: str | Path | None,
    split: str | None,
    tta: bool,
    img_size: int | None = None,
    calibrate: bool = False,
) -> str:
    """Sub-folder of ``RUN/eval`` per source: ``test``, ``data-Testing``, ``data-kaggle-test``, ``manifest-val-tta``,
    ``test-224px`` for another input size than the model was trained at, and ``test-ts`` when temperature-scaled."""
    if data is not None:
        tag = f"data-{Path(data).resolve().name}" + (f"-{split}" if split else "")
    elif manifest is not None:
        tag = f"{Path(manifest).stem}-{split or 'all'}"
    else:
        tag = split or "all"
    return tag + ("-tta" if tta else "") + (f"-{img_size}px" if img_size else "") + ("-ts" if calibrate else "")


def resolve_split(data: str | Path | None, split: str | None) -> str | None:
    """The split actually used: manifests use ``split``; a folder uses it only if it has an official split layout.

    A Kaggle root folder holding ``Training/`` and ``Testing/`` with ``split="test"`` evaluates ``Testing/``; a plain
    class-folder layout (e.g. the ``Testing`` folder itself) has no splits, so all of its images are used.
    """
    if data is None or split is None:
        return split
    from popevit.data.discover import RESERVED_DIRS, SPLIT_DIRS

    top = [p for p in Path(data).iterdir() if p.is_dir() and not p.name.startswith(".")]
    top = [p for p in top if p.name.lower() not in RESERVED_DIRS]
    return split if top and all(p.name.lower() in SPLIT_DIRS for p in top) else None


def default_eval_dir(
    run_dir: str | Path,
    data: str | Path | None = None,
    manifest: str | Path | None = None,
    split: str | None = "test",
    tta: bool = False,
    img_size: int | None = None,
    calibrate: bool = False,
) -> Path:
    return Path(run_dir) / EVAL_DIR / eval_tag(data, manifest, split, tta, img_size, calibrate)


def source_location(run_dir: str | Path, data: str | Path | None, manifest: str | Path | None) -> str:
    """The evaluated source as an absolute path: the image folder, the manifest, or the run's own ``manifest.csv``."""
    src = data if data is not None else manifest if manifest is not None else Path(run_dir) / "manifest.csv"
    return str(Path(src).resolve())


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


def _run_data_options(run_dir: Path) -> dict[str, Any]:
    """The run's task definition (class_map, classes, binary) from its ``config.yaml``, so new data is mapped alike."""
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        return {}
    from popevit.config import load_config

    d = load_config(cfg_path).data
    return {"class_map": d.class_map, "classes": d.classes, "binary": d.binary}


def load_eval_samples(
    run_dir: Path,
    model_classes: list[str],
    *,
    data: str | Path | None = None,
    manifest: str | Path | None = None,
    split: str | None = "test",
) -> tuple[list[str], np.ndarray, dict[str, Any]]:
    """Images and labels to evaluate on, checked against the model's classes.

    Args:
        run_dir: the run (its ``manifest.csv`` is the default source, and its config gives the task definition).
        model_classes: the model's classes in output order.
        data: an image folder in any layout the data layer reads.
        manifest: a manifest CSV; ``split`` selects the rows.
        split: manifest split; with ``data``, the official split (``Training``/``Testing``) or None for all images
            (see :func:`resolve_split`).

    Returns:
        ``(paths, y, source)``: paths, (n,) class indices into ``model_classes``, and a description of the source.
    """
    from popevit.data import load_samples

    if data is not None and manifest is not None:
        raise ValueError("pass either data (an image folder) or manifest (a split CSV), not both")
    if data is None and manifest is None:
        manifest = run_dir / "manifest.csv"
        if not manifest.is_file():
            raise FileNotFoundError(
                f"{str(manifest)!r} not found and no data given: pass --data DIR or --manifest FILE --split test"
            )
    opts = _run_data_options(run_dir)
    if data is not None:
        if not Path(data).is_dir():
            raise FileNotFoundError(f"data folder {str(data)!r} not found")
        samples = load_samples(data=Path(data), split=split, **opts)
        source: dict[str, Any] = {"data": str(data), "split": split}
    else:
        opts.pop("class_map", None)  # manifests hold class names already
        samples = load_samples(manifest=Path(manifest), split=split, **opts)
        source = {"manifest": str(manifest), "split": split}
    source["resolved"] = source_location(run_dir, data, manifest)
    data_classes = list(samples.classes)
    if sorted(data_classes) != sorted(model_classes):
        missing = sorted(set(model_classes) - set(data_classes))
        extra = sorted(set(data_classes) - set(model_classes))
        raise ClassMismatchError(
            f"the data's classes {data_classes} do not match the model's classes {model_classes} "
            f"(missing: {missing}, not known to the model: {extra}); evaluate on data with the model's classes, "
            "or map/filter them in the run's config (data.class_map, data.classes, data.binary)"
        )
    if len(samples.paths) == 0:
        raise ValueError(f"no images found in {source}; check the path and split name")
    y = np.array([model_classes.index(lbl) for lbl in samples.labels], dtype=np.int64)
    source["skipped"] = [[str(p), reason] for p, reason in samples.skipped]
    return [str(p) for p in samples.paths], y, source


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
    from popevit.data import load_samples
    from popevit.data.cache import default_cache_dir
    from popevit.data.dedup import NEAR_THRESHOLD, fingerprint_files, near_pairs

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


def jsonable(obj: Any) -> Any:
    """``obj`` with NaN/inf floats replaced by None, so the written JSON is strict (readable by any tool)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    """Strict JSON (NaN -> null), indented."""
    Path(path).write_text(json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")


def summarize(preds: Predictions, n_boot: int, seed: int) -> dict[str, Any]:
    """``n``, per-class counts and every metric with its CI for one set of predictions."""
    counts = Counter(preds.classes[i] for i in preds.y)
    return {
        "n": len(preds.paths),
        "counts": {c: counts.get(c, 0) for c in preds.classes},
        "metrics": metrics_with_ci(preds.y, preds.proba, preds.classes, n_boot=n_boot, seed=seed, level=CI_LEVEL),
    }


def evaluate_run(
    run_dir: str | Path,
    *,
    data: str | Path | None = None,
    manifest: str | Path | None = None,
    split: str | None = "test",
    tta: bool = False,
    out: str | Path | None = None,
    dedup_against: str | Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
    device: str | None = None,
    plots: bool = True,
    cache_dir: str | Path | None = None,
    img_size: int | None = None,
    calibrate: bool = False,
) -> dict[str, Any]:
    """Evaluate a run's model and write predictions, metrics with bootstrap CIs and plots.

    Args:
        run_dir: run directory holding ``model.safetensors`` + ``model.json``.
        data: image folder to evaluate on, in any layout the data layer reads: all its images, or with an official
            ``Training``/``Testing`` layout the ``split`` one (see :func:`resolve_split`).
        manifest: manifest CSV to evaluate on (with ``split``). Default, when neither is given: the run's own
            ``manifest.csv``.
        split: manifest split to use (default ``test``).
        tta: average the probabilities over a horizontal flip.
        out: output folder; default ``RUN/eval/<tag>`` (see :func:`eval_tag`).
        dedup_against: training folder or manifest (its ``train`` split); every metric is also reported on the
            subset of images with no exact or near duplicate there.
        n_boot: bootstrap resamples for the CIs (>= 1000 for reported numbers).
        seed: bootstrap seed.
        batch_size: inference batch size.
        device: torch device; default CUDA when available.
        plots: write the PNG figures.
        cache_dir: decode/fingerprint cache folder passed to the data layer (``None``: its default).
        img_size: evaluate at this input size instead of the training size (resolution extrapolation: every
            positional encoding follows the larger patch grid, see ``popevit.models.pos_enc``); must be a multiple
            of the patch size.
        calibrate: temperature-scale the probabilities with a ``T`` fitted on the run's validation split (same
            preprocessing and ``tta``); ``metrics.json`` gains a ``calibration`` record with ``T``, the validation
            NLL before and after, the uncalibrated ECE and log loss, and ``at_bound`` (T not identified: the
            validation split is separated perfectly; a warning says so). Refused when the evaluated images include
            validation images.

    Returns:
        The content of ``metrics.json`` (with ``out`` added).
    """
    from popevit.artifact import WEIGHTS, file_sha256, load_artifact
    from popevit.data.dataset import ImageDataset

    run_dir = Path(run_dir)
    model, meta = load_artifact(run_dir)
    classes = list(meta.classes)
    split = resolve_split(data, split)
    paths, y, source = load_eval_samples(run_dir, classes, data=data, manifest=manifest, split=split)
    preprocess = resize_preprocess(meta, model, img_size)
    out_dir = (
        Path(out) if out is not None else default_eval_dir(run_dir, data, manifest, split, tta, img_size, calibrate)
    )

    def predict(image_paths: list[str], labels: np.ndarray) -> np.ndarray:
        dataset = ImageDataset([Path(p) for p in image_paths], labels.tolist(), preprocess, cache_dir=cache_dir)
        return predict_proba(model, dataset, batch_size=batch_size, tta=tta, device=device)

    calibration = None
    if calibrate:
        val_paths, val_y, _ = load_eval_samples(run_dir, classes, split="val")
        overlap = len({Path(p).resolve() for p in val_paths} & {Path(p).resolve() for p in paths})
        if overlap:
            raise ValueError(
                f"--calibrate fits the temperature on the run's validation split, and {overlap} of the {len(paths)} "
                "images to evaluate are validation images: evaluate another split (e.g. --split test) or drop "
                "--calibrate"
            )
        calibration = {"method": "temperature (Guo et al. 2017)", "fit_on": {"split": "val", "n": len(val_paths)}}
        val_proba = predict(val_paths, val_y)
        t = fit_temperature(val_y, val_proba)
        calibration["temperature"] = t
        calibration["at_bound"] = temperature_at_bound(t)
        calibration["val_nll"] = {"before": nll(val_y, val_proba), "after": nll(val_y, val_proba, t)}
    out_dir.mkdir(parents=True, exist_ok=True)
    proba = predict(paths, y)
    if calibration is not None:
        raw = point_metrics(y, proba, classes)
        calibration["uncalibrated"] = {k: raw[k] for k in ("ece", "log_loss", "auroc_macro")}
        proba = apply_temperature(proba, calibration["temperature"])
    preds = Predictions(paths, y, proba, classes)
    preds.save(out_dir / PREDICTIONS)

    result: dict[str, Any] = {
        "run": str(run_dir),
        "model": {"name": meta.name, "kwargs": meta.kwargs, "weights_sha256": file_sha256(run_dir / WEIGHTS)},
        "classes": classes,
        "source": source,
        "tta": tta,
        "img_size": preprocess.img_size,
        "bootstrap": {"method": CI_METHOD, "level": CI_LEVEL, "n_boot": n_boot, "seed": seed, "unit": "image"},
        **summarize(preds, n_boot, seed),
    }
    if calibration is not None:
        result["calibration"] = calibration
    what = model_label(meta.name, meta.kwargs), source_label(source)  # named in every figure's title
    if plots:
        title = figure_title(*what, len(y))
        result["plots"] = {k: p.name for k, p in plot_all(y, preds.proba, classes, out_dir, title=title).items()}
    if dedup_against is not None:
        mask, info = novel_mask(paths, dedup_against, cache_dir=cache_dir)
        sub = preds.subset(mask)
        result["dedup"] = {**info, **(summarize(sub, n_boot, seed) if mask.any() else {"n": 0, "metrics": {}})}
        if plots and 0 < len(sub.paths) < len(preds.paths):  # identical figures when nothing was removed
            result["dedup"]["plots"] = {
                k: p.name
                for k, p in plot_all(
                    sub.y,
                    sub.proba,
                    classes,
                    out_dir,
                    prefix="dedup_",
                    title=figure_title(what[0], f"{what[1]}, no duplicate in {Path(dedup_against).name}", len(sub.y)),
                ).items()
            }
    write_json(out_dir / METRICS, result)
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
