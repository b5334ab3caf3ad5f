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

import math
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from popevit.data.checks import Skip, write_skipped
from popevit.evaluation.calibration import apply_temperature, fit_temperature, nll, temperature_at_bound
from popevit.evaluation.describe import model_label, source_label
from popevit.evaluation.labelmap import LabelMap, LabelMapError, parse_label_map, resolve_label_map
from popevit.evaluation.metrics import metrics_with_ci, point_metrics
from popevit.evaluation.plots import figure_title, plot_all
from popevit.evaluation.predictions import PREDICTIONS, Predictions, predict_proba, resolve_device
from popevit.io import atomic_write_json

METRICS = "metrics.json"
SKIPPED = "skipped.csv"
EVAL_DIR = "eval"
CI_METHOD = "percentile"
CI_LEVEL = 0.95


ClassMismatchError = LabelMapError  # the evaluation data's classes do not fit the model's (no label map fits them)


def eval_tag(
    data: str | Path | None,
    manifest: str | Path | None,
    split: str | None,
    tta: bool,
    img_size: int | None = None,
    calibrate: bool = False,
    source: str | None = None,
) -> str:
    """Sub-folder of ``RUN/eval`` per source: ``test``, ``data-Testing``, ``data-kaggle-test``, ``manifest-val-tta``,
    ``test-br35h`` for one source of a manifest of several, ``test-224px`` for another input size than the model was
    trained at, and ``test-ts`` when temperature-scaled."""
    if data is not None:
        tag = f"data-{Path(data).resolve().name}" + (f"-{split}" if split else "")
    elif manifest is not None:
        tag = f"{Path(manifest).stem}-{split or 'all'}"
    else:
        tag = split or "all"
    tag += f"-{source}" if source else ""
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
    source: str | None = None,
) -> Path:
    return Path(run_dir) / EVAL_DIR / eval_tag(data, manifest, split, tta, img_size, calibrate, source)


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
    """Images and labels to evaluate on, in the model's own classes (see :func:`load_mapped_samples`).

    Returns:
        ``(paths, y, source)``: paths, (n,) class indices into ``model_classes``, and a description of the source.

    Raises:
        ClassMismatchError: the data's classes are not among the model's (a label map would be needed).
    """
    paths, y, source, lmap = load_mapped_samples(run_dir, model_classes, data=data, manifest=manifest, split=split)
    to_model = np.array([list(model_classes).index(t) for t in lmap.targets], dtype=np.int64)  # no rules: identity
    return paths, to_model[y], source


def load_mapped_samples(
    run_dir: Path,
    model_classes: list[str],
    *,
    data: str | Path | None = None,
    manifest: str | Path | None = None,
    split: str | None = "test",
    label_map: str | None = None,
    source_name: str | None = None,
) -> tuple[list[str], np.ndarray, dict[str, Any], LabelMap]:
    """Images and labels to evaluate on, mapped onto classes the model can be scored in.

    Args:
        run_dir: the run (its ``manifest.csv`` is the default source, and its config gives the task definition).
        model_classes: the model's classes in output order.
        data: an image folder in any layout the data layer reads.
        manifest: a manifest CSV; ``split`` selects the rows.
        split: manifest split; with ``data``, the official split (``Training``/``Testing``) or None for all images
            (see :func:`resolve_split`).
        label_map: rules of :mod:`popevit.evaluation.labelmap` (e.g. ``"yes=tumor,no=notumor,
            glioma|meningioma|pituitary=tumor"``); None: the data's classes must be among the model's.
        source_name: with a manifest of several sources (``popevit data split --add``), evaluate this one's rows.

    Returns:
        ``(paths, y, source, label_map)``: paths, (n,) indices into ``label_map.targets``, a description of the
        source (``external`` is True for anything but the run's own manifest, ``name`` names it), and the map.
    """
    from popevit.data import load_samples

    if data is not None and manifest is not None:
        raise ValueError("pass either data (an image folder) or manifest (a split CSV), not both")
    own = run_dir / "manifest.csv"
    if data is None and manifest is None:
        manifest = own
        if not manifest.is_file():
            raise FileNotFoundError(
                f"{str(manifest)!r} not found and no data given: pass --data DIR or --manifest FILE --split test"
            )
    opts = _run_data_options(run_dir)
    if data is not None:
        if not Path(data).is_dir():
            raise FileNotFoundError(f"data folder {str(data)!r} not found")
        samples = load_samples(data=Path(data), split=split, **opts)
        source: dict[str, Any] = {"data": str(data), "split": split, "name": Path(data).resolve().name}
    else:
        opts.pop("class_map", None)  # manifests hold class names already
        samples = load_samples(manifest=Path(manifest), split=split, source=source_name, **opts)
        source = {"manifest": str(manifest), "split": split, "name": source_name or Path(manifest).stem}
        if source_name is not None:
            source["source"] = source_name
    source["resolved"] = source_location(run_dir, data, manifest)
    source["external"] = source["resolved"] != str(own.resolve())
    try:
        lmap = resolve_label_map(parse_label_map(label_map), list(model_classes), list(samples.classes))
    except LabelMapError as err:
        raise LabelMapError(f"{source['resolved']}: {err}") from None
    if len(samples.paths) == 0:
        raise ValueError(f"no images found in {source['resolved']}; check the path and split name")
    y = np.array([lmap.targets.index(lmap.data[lbl]) for lbl in samples.labels], dtype=np.int64)
    source["skipped"] = [[str(p), reason] for p, reason in samples.skipped]
    source["warnings"] = samples.warnings
    absent = [c for c in lmap.targets if c not in {lmap.data[d] for d in samples.classes}]
    if absent:  # a subset of the classes: scored as it is, but said
        source["warnings"].append(
            f"{source['resolved']} has no images of the model's classes {absent}: the metrics are on the classes it "
            "has, and the model still predicts all of its own"
        )
    return [str(p) for p in samples.paths], y, source, lmap


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
    atomic_write_json(path, jsonable(obj), allow_nan=False)


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
    label_map: str | None = None,
    dedup: bool = True,
    source_name: str | None = None,
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
        label_map: rules mapping the model's and the data's classes onto shared targets
            (:mod:`popevit.evaluation.labelmap`), e.g. ``"yes=tumor,no=notumor,glioma|meningioma|pituitary=tumor"``
            for Br35H and a 4-class model: the model's probabilities are summed per target, then scored.
        dedup: on external data (anything but the run's own manifest) with no ``dedup_against``, also report the
            images with no exact or near duplicate in the run's own training split.
        source_name: evaluate only the rows of this source of a manifest of several sources (``data split --add``),
            e.g. the held-out Br35H groups of a run trained on Kaggle and part of Br35H.

    Returns:
        The content of ``metrics.json`` (with ``out`` added).
    """
    from popevit.artifact import WEIGHTS, file_sha256, load_artifact
    from popevit.data.dataset import ImageDataset

    run_dir = Path(run_dir)
    resolve_device(device)  # a bad --device is refused before anything is read or written
    model, meta = load_artifact(run_dir)
    classes = list(meta.classes)
    split = resolve_split(data, split)
    paths, y, source, lmap = load_mapped_samples(
        run_dir, classes, data=data, manifest=manifest, split=split, label_map=label_map, source_name=source_name
    )
    if dedup and dedup_against is None and source["external"] and (run_dir / "manifest.csv").is_file():
        dedup_against = run_dir / "manifest.csv"  # external data: how much of it did the model train on?
    preprocess = resize_preprocess(meta, model, img_size)
    out_dir = (
        Path(out)
        if out is not None
        else default_eval_dir(run_dir, data, manifest, split, tta, img_size, calibrate, source_name)
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
    proba = predict(paths, y)  # (n, K) in the model's classes
    eval_classes = lmap.targets
    if calibration is not None:
        raw = point_metrics(y, lmap.collapse(proba, classes), eval_classes)
        calibration["uncalibrated"] = {k: raw[k] for k in ("ece", "log_loss", "auroc_macro")}
        proba = apply_temperature(proba, calibration["temperature"])
    proba = lmap.collapse(proba, classes)  # (n, T): the sum of each target's model classes
    preds = Predictions(paths, y, proba, eval_classes)
    preds.save(out_dir / PREDICTIONS)

    result: dict[str, Any] = {
        "run": str(run_dir),
        "model": {"name": meta.name, "kwargs": meta.kwargs, "weights_sha256": file_sha256(run_dir / WEIGHTS)},
        "classes": eval_classes,
        "model_classes": classes,
        "source": source,
        "tta": tta,
        "img_size": preprocess.img_size,
        "bootstrap": {"method": CI_METHOD, "level": CI_LEVEL, "n_boot": n_boot, "seed": seed, "unit": "image"},
        **summarize(preds, n_boot, seed),
    }
    if not lmap.identity or lmap.rules:
        result["label_map"] = lmap.to_json()
    if calibration is not None:
        result["calibration"] = calibration
    what = model_label(meta.name, meta.kwargs), source_label(source)  # named in every figure's title
    if plots:
        title = figure_title(*what, len(y))
        result["plots"] = {k: p.name for k, p in plot_all(y, preds.proba, eval_classes, out_dir, title=title).items()}
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
                    eval_classes,
                    out_dir,
                    prefix="dedup_",
                    title=figure_title(what[0], f"{what[1]}, no duplicate in {Path(dedup_against).name}", len(sub.y)),
                ).items()
            }
    write_json(out_dir / METRICS, result)
    if source["skipped"]:  # every file not evaluated, with the reason (also in metrics.json)
        write_skipped(out_dir / SKIPPED, [Skip(Path(p), reason) for p, reason in source["skipped"]])
    elif (out_dir / SKIPPED).is_file():  # an earlier evaluation's list, of files this one used
        (out_dir / SKIPPED).unlink()
    from popevit.serve.card import write_model_card

    write_model_card(run_dir)
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
