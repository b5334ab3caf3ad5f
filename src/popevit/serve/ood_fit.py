"""Fitting the out-of-distribution flag of :mod:`popevit.serve.ood` on a run's own images.

The input model (a probabilistic PCA of pooled inputs) is fitted on the run's training split, the thresholds on its
validation split; both are saved in the run folder, and the model card is refreshed to list the flag. This needs
torch; the records in :mod:`popevit.serve.ood` do not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file
from sklearn.decomposition import PCA

from popevit.artifact import META, WEIGHTS, file_sha256, load_artifact
from popevit.config import PreprocessConfig
from popevit.data.dataset import ImageDataset
from popevit.evaluation.source import EvalSource, load_eval_samples
from popevit.io import atomic_write_bytes
from popevit.serve.card import write_model_card
from popevit.serve.module import ServingModule
from popevit.serve.ood import (
    COMPONENTS,
    FORMAT,
    MAX_FIT_IMAGES,
    OOD_ARRAYS,
    OOD_JSON,
    RECALL,
    REFERENCES,
    SCORES,
    InputDensity,
    OODDetector,
    OODUnavailable,
    is_stale,
    load_ood,
    pooled_side,
    quantile_threshold,
)


def _images(
    run_dir: Path,
    classes: list[str],
    cfg: PreprocessConfig,
    split: str,
    limit: int | None,
    seed: int,
    cache_dir: str | Path | None,
) -> tuple[torch.Tensor, int, list[list[str]]]:
    """The readable images of one split of the run's manifest as (n, 1, S, S) floats in [0, 1], their count, and
    the unreadable ones with the reason (a seeded sample of ``limit`` when there are more)."""
    manifest = run_dir / "manifest.csv"
    try:
        paths, _, _ = load_eval_samples(run_dir, classes, EvalSource(split=split))
    except ValueError as err:
        raise OODUnavailable(f"no usable {split} split in {manifest}: {err}") from None
    if limit is not None and len(paths) > limit:
        keep = np.sort(np.random.default_rng(seed).choice(len(paths), limit, replace=False))
        paths = [paths[i] for i in keep]
    ds = ImageDataset([Path(p) for p in paths], [0] * len(paths), cfg, cache_dir=cache_dir)
    try:
        bad = ds.prepare(workers=1)
    except Exception as err:  # the cache cannot be written, a changed file, ...
        raise OODUnavailable(f"cannot read the {split} images of {manifest}: {err}") from None
    bad_paths = {str(p) for p, _ in bad}
    ok = [i for i, p in enumerate(ds.paths) if str(p) not in bad_paths]
    if len(ok) < 10:
        first = f" (first: {bad[0][0]}: {bad[0][1]})" if bad else ""
        raise OODUnavailable(
            f"only {len(ok)} of the {len(paths)} {split} images of {manifest} can be read{first}; "
            "the data moved or is not on this machine"
        )
    x = torch.from_numpy(np.stack([ds.array(i) for i in ok])).unsqueeze(1).float().div_(255.0)  # (n, 1, S, S)
    return x, len(ok), [[str(p), r] for p, r in bad]


def _fit_density(x_train: torch.Tensor, img_size: int, components: int, seed: int) -> tuple[InputDensity, int]:
    """The PPCA of the pooled (n, 1, S, S) training inputs (centres not yet set), and its number of components."""
    pool = pooled_side(img_size)
    k = img_size // pool
    pooled = (torch.nn.functional.avg_pool2d(x_train, k) if k > 1 else x_train).flatten(1).double().numpy()
    # k well below n: with k near n the components reproduce every fitting image, the residual variance is ~0 and
    # the distance of any other image explodes (and float32 rounding decides it)
    n_comp = int(max(1, min(components, pooled.shape[0] // 4, pooled.shape[1] - 1)))
    pca = PCA(n_components=n_comp, svd_solver="full", random_state=seed).fit(pooled)
    mean_var = float(pooled.var(axis=0).mean())
    noise = float(max(pca.noise_variance_, 1e-3 * mean_var, 1e-12))
    variances = np.maximum(pca.explained_variance_, noise)
    return InputDensity(pool, pca.mean_, pca.components_, variances, noise, 0.0), n_comp


def _scores(module: ServingModule, x: torch.Tensor, batch_size: int) -> dict[str, np.ndarray]:
    """``{score name: (n,) scores}`` of the served graph on (n, 1, S, S) inputs."""
    dev = next(module.parameters()).device
    parts: list[list[np.ndarray]] = [[], [], []]
    with torch.inference_mode():
        for xb in x.split(batch_size):
            for part, out in zip(parts, module(xb.to(dev))[1:], strict=True):
                part.append(out.double().cpu().numpy())
    return {name: np.concatenate(part) for name, part in zip(SCORES, parts, strict=True)}


def _centre(
    density: InputDensity, model: torch.nn.Module, cfg: PreprocessConfig, x_train: torch.Tensor, bs: int
) -> ServingModule:
    """Set the median log distance and log standard deviation of the training inputs; the served graph with them."""
    raw = ServingModule(model, cfg, density).to(next(model.parameters()).device)
    with torch.inference_mode():
        log_d = torch.cat([raw.log_distance(xb.to(raw.mean.device)) for xb in x_train.split(bs)])
    density.center = float(np.median(log_d.double().cpu().numpy()))
    log_std = x_train.flatten(1).double().std(dim=1).clamp_min(1e-6).log()
    density.contrast_center = float(np.median(log_std.numpy()))
    return ServingModule(model, cfg, density).to(raw.mean.device)


def fit_ood(
    run_dir: str | Path,
    *,
    recall: float = RECALL,
    max_fit_images: int = MAX_FIT_IMAGES,
    components: int = COMPONENTS,
    seed: int = 0,
    batch_size: int = 64,
    device: str | None = None,
    cache_dir: str | Path | None = None,
    echo: Callable[[str], None] | None = None,
) -> OODDetector:
    """Fit the input model on the run's training split and both thresholds on its validation split; save them.

    Args:
        run_dir: a finished run with its ``manifest.csv``.
        recall: in-distribution recall of the combined flag on the validation split (each score gets half of
            the remaining share).
        max_fit_images: training images for the input model (a seeded sample when there are more).
        components: principal components of the input model.
        seed: sampling and PCA seed.
        batch_size: inference batch size.
        device: torch device (default CPU).
        cache_dir: the decode-once cache (default: the data layer's).
        echo: progress lines.

    Returns:
        The detector, also written to ``RUN/ood.json`` and ``RUN/ood.safetensors``.

    Raises:
        OODUnavailable: no manifest or validation split, or too few readable images; the message says why.
    """
    if not 0.5 <= recall < 1:
        raise ValueError(f"recall must be in [0.5, 1), got {recall}")
    run_dir = Path(run_dir)
    manifest = run_dir / "manifest.csv"
    if not manifest.is_file():
        raise OODUnavailable(f"{manifest} not found (the run was not trained on a manifest, e.g. CIFAR)")
    model, meta = load_artifact(run_dir, map_location=device or "cpu")
    cfg, say = meta.preprocess, echo or (lambda _: None)
    x_train, n_train, bad_train = _images(run_dir, meta.classes, cfg, "train", max_fit_images, seed, cache_dir)
    x_val, n_val, bad_val = _images(run_dir, meta.classes, cfg, "val", None, seed, cache_dir)
    say(f"fitting the OOD flag: input model on {n_train} training images, thresholds on {n_val} validation images")
    density, n_comp = _fit_density(x_train, cfg.img_size, components, seed)
    val = _scores(_centre(density, model, cfg, x_train, batch_size), x_val, batch_size)

    q = 1 - (1 - recall) / len(SCORES)
    thresholds = {name: quantile_threshold(val[name], q) for name in SCORES}
    flagged = np.any([val[name] > thresholds[name] for name in SCORES], axis=0)
    arrays = density.arrays()
    atomic_write_bytes(run_dir / OOD_ARRAYS, lambda tmp: save_file(arrays, tmp, metadata={"format": FORMAT}))
    fitted_on = {
        "manifest": str(manifest.resolve()),
        "manifest_sha256": file_sha256(manifest),
        "input_model": {"split": "train", "n": n_train, "components": n_comp, "pooled_side": density.pool},
        "thresholds": {"split": "val", "n": n_val},
        "unreadable": (bad_train + bad_val)[:20],
    }
    record = {
        "format": FORMAT,
        "rule": "flag when any score is above its threshold",
        "recall_target": recall,
        "quantile": q,
        "thresholds": thresholds,
        "scores": {name: REFERENCES[name] for name in SCORES},
        "val_recall": float(1 - flagged.mean()),
        "fitted_on": fitted_on,
        "weights_sha256": file_sha256(run_dir / WEIGHTS),
        "preprocess": cfg.model_dump(mode="json"),
        "arrays_sha256": file_sha256(run_dir / OOD_ARRAYS),
    }
    text = json.dumps(record, indent=2)
    atomic_write_bytes(run_dir / OOD_JSON, lambda tmp: Path(tmp).write_text(text))
    write_model_card(run_dir)  # the card lists the flag
    say(
        "OOD flag fitted: "
        + " or ".join(f"{k} > {v:.3f}" for k, v in thresholds.items())
        + f" (validation recall {record['val_recall']:.3f}); saved {run_dir / OOD_JSON}"
    )
    return OODDetector(thresholds, record, density)


def ensure_ood(
    run_dir: str | Path, *, device: str | None = None, echo: Callable[[str], None] | None = None
) -> tuple[OODDetector | None, str | None]:
    """The run's detector: loaded when fitted for these weights, else fitted now when the run's images are readable.

    Returns:
        ``(detector, None)``, or ``(None, reason)`` when it cannot be fitted.
    """
    run_dir = Path(run_dir)
    say = echo or (lambda _: None)
    try:
        detector = load_ood(run_dir)
    except ValueError as err:
        detector, stale = None, str(err)
    else:
        stale = None
    if detector is not None:
        meta = json.loads((run_dir / META).read_text())
        stale = is_stale(detector, file_sha256(run_dir / WEIGHTS), meta["preprocess"])
        if stale is None:
            return detector, None
    if stale:
        say(f"refitting the OOD flag: {stale}")
    try:
        return fit_ood(run_dir, device=device, echo=say), None
    except OODUnavailable as err:
        return None, (
            f"no OOD flag: {err}. It is fitted once from the run's manifest images (training and validation "
            f"splits) and saved as {run_dir / OOD_JSON}"
        )
