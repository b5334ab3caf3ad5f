"""Out-of-distribution flag: should the model be trusted on this image at all?

Three scores per image, each with a threshold fitted on the run's own data, and an image is flagged when any is
above its threshold:

- ``energy`` = ``-logsumexp(logits)`` (Liu et al. 2020, "Energy-based out-of-distribution detection",
  arXiv:2010.03759, Eq. 4, T = 1): the classifier's own view. Low-energy (confident) inputs are in-distribution.
- ``input``: how atypical the preprocessed image itself is for the training images. A probabilistic PCA (Tipping &
  Bishop 1999) of the [0, 1] model input, average-pooled to at most 32 x 32, is fitted on (up to 2000 of) the run's
  training images; the score is ``|log d(x) - median log d(train)|`` with ``d`` the PPCA Mahalanobis distance
  (within the ``k`` components, plus the residual over the noise variance). Two-sided on purpose, a typicality test
  (Nalisnick et al. 2019, arXiv:1906.02994): a blank image sits *closer* to the training mean than any real slice
  and would pass a one-sided test.
- ``contrast``: the same typicality test on the standard deviation of the [0, 1] input. The percentile clip
  stretches every real slice to the full range; a flat field (a blank or saturated image) stays flat, and when the
  training backgrounds vary between dark and bright (as the phantoms' do) the flat image is a typical PPCA distance
  away from the mean, so the input score alone can miss it.

Why both: a classifier trained briefly, or on a narrow task, is no more confident on MRI than on noise, so energy
alone misses photos, noise and blank images (measured in ``tests/serve/test_ood.py``); the input score does not
depend on how well the classifier learned, energy catches MRI-like inputs on which the classifier behaves unlike
on its validation images.

Thresholds: each at the ``1 - (1 - recall) / 3`` quantile of the run's validation images (``recall`` = 0.95), so
that at least 95% of in-distribution validation images pass both (Bonferroni); the measured validation recall of
the combined flag is recorded. Fitted files: ``RUN/ood.json`` (thresholds, what they were fitted on) and
``RUN/ood.safetensors`` (the PPCA arrays). This module's records are torch-free; fitting needs torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

OOD_JSON = "ood.json"
OOD_ARRAYS = "ood.safetensors"
FORMAT = "popevit-ood/1"
RECALL = 0.95
MAX_POOL = 32  # the input model sees the image average-pooled to at most 32 x 32
COMPONENTS = 32
MAX_FIT_IMAGES = 2000
SCORES = ("energy", "input", "contrast")
REFERENCES = {
    "energy": "energy -logsumexp(logits), Liu et al. 2020, arXiv:2010.03759",
    "input": "typicality of a PPCA distance of the preprocessed input (Tipping & Bishop 1999; Nalisnick et al. 2019, "
    "arXiv:1906.02994)",
    "contrast": "typicality of the standard deviation of the preprocessed input",
}


class OODUnavailable(RuntimeError):
    """The flag cannot be fitted (no manifest, no validation split, unreadable images); the message says why."""


def pooled_side(img_size: int, limit: int = MAX_POOL) -> int:
    """The largest divisor of ``img_size`` that is <= ``limit`` (exact average pooling, exportable to ONNX)."""
    return max(d for d in range(1, min(limit, img_size) + 1) if img_size % d == 0)


@dataclass
class InputDensity:
    """A probabilistic PCA of pooled [0, 1] model inputs.

    Attributes:
        pool: pooled side p; inputs are average-pooled from S x S to p x p (d = p * p values).
        mean: (d,) mean of the fitting images.
        components: (k, d) orthonormal principal directions.
        variances: (k,) variance along each direction.
        noise_variance: mean variance of the discarded directions.
        center: median log distance of the fitting images.
        contrast_center: median log standard deviation of the fitting images.
    """

    pool: int
    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    noise_variance: float
    center: float
    contrast_center: float = 0.0

    def arrays(self) -> dict[str, np.ndarray]:
        # C order: safetensors writes the raw buffer, and sklearn's components_ may be Fortran-ordered
        return {
            "mean": np.ascontiguousarray(self.mean, dtype=np.float32),
            "components": np.ascontiguousarray(self.components, dtype=np.float32),
            "variances": np.ascontiguousarray(self.variances, dtype=np.float32),
            "scalars": np.array([self.pool, self.noise_variance, self.center, self.contrast_center], dtype=np.float64),
        }

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> InputDensity:
        pool, noise, center, contrast = (float(v) for v in a["scalars"])
        return cls(int(pool), a["mean"], a["components"], a["variances"], noise, center, contrast)


@dataclass
class OODDetector:
    """Thresholds per score, the record of how they were fitted, and the input model (None in an ONNX file, whose
    graph holds it)."""

    thresholds: dict[str, float]
    record: dict[str, Any]
    density: InputDensity | None = None

    def flag(self, scores: dict[str, np.ndarray]) -> tuple[np.ndarray, list[list[str]]]:
        """``(flagged (n,) bool, the scores above their threshold per image)`` for ``{name: (n,) scores}``."""
        n = len(next(iter(scores.values())))
        by = [[] for _ in range(n)]
        for name, t in self.thresholds.items():
            above = np.asarray(scores[name], dtype=np.float64) > t
            for i in np.flatnonzero(above):
                by[i].append(name)
        return np.array([bool(b) for b in by], dtype=bool), by

    def summary(self) -> dict[str, Any]:
        """What ``predictions.json`` and the ONNX metadata say of the flag (no arrays)."""
        return {k: v for k, v in self.record.items() if k != "arrays_sha256"}


def load_ood(run_dir: str | Path) -> OODDetector | None:
    """The fitted detector of a run, or None when ``RUN/ood.json`` does not exist."""
    from safetensors.numpy import load_file

    run_dir = Path(run_dir)
    path = run_dir / OOD_JSON
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if record.get("format") != FORMAT:
        raise ValueError(f"{path} has format {record.get('format')!r}, expected {FORMAT!r}; delete it to refit")
    density = None
    if (run_dir / OOD_ARRAYS).is_file():
        density = InputDensity.from_arrays(load_file(str(run_dir / OOD_ARRAYS)))
    return OODDetector({k: float(v) for k, v in record["thresholds"].items()}, record, density)


def is_stale(detector: OODDetector, weights_sha256: str, preprocess: dict[str, Any]) -> str | None:
    """Why a saved detector no longer fits the run (other weights or preprocessing), or None."""
    if detector.record.get("weights_sha256") != weights_sha256:
        return "the run's weights changed since it was fitted"
    if detector.record.get("preprocess") != preprocess:
        return "the run's preprocessing changed since it was fitted"
    return None


def _quantile_threshold(values: np.ndarray, q: float) -> float:
    return float(np.quantile(np.asarray(values, dtype=np.float64), q, method="higher"))


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
    import torch
    from safetensors.numpy import save_file
    from sklearn.decomposition import PCA

    from popevit.artifact import WEIGHTS, atomic_write_bytes, file_sha256, load_artifact
    from popevit.data.dataset import ImageDataset
    from popevit.evaluation.evaluate import load_eval_samples
    from popevit.serve.module import ServingModule

    if not 0.5 <= recall < 1:
        raise ValueError(f"recall must be in [0.5, 1), got {recall}")
    run_dir = Path(run_dir)
    manifest = run_dir / "manifest.csv"
    if not manifest.is_file():
        raise OODUnavailable(f"{manifest} not found (the run was not trained on a manifest, e.g. CIFAR)")
    model, meta = load_artifact(run_dir, map_location=device or "cpu")
    cfg = meta.preprocess

    def images(split: str, limit: int | None) -> tuple[torch.Tensor, int, list[list[str]]]:
        try:
            paths, _, _ = load_eval_samples(run_dir, meta.classes, split=split)
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

    say = echo or (lambda _: None)
    x_train, n_train, bad_train = images("train", max_fit_images)
    x_val, n_val, bad_val = images("val", None)
    say(f"fitting the OOD flag: input model on {n_train} training images, thresholds on {n_val} validation images")

    pool = pooled_side(cfg.img_size)
    k = cfg.img_size // pool
    pooled = (torch.nn.functional.avg_pool2d(x_train, k) if k > 1 else x_train).flatten(1).double().numpy()
    # k well below n: with k near n the components reproduce every fitting image, the residual variance is ~0 and
    # the distance of any other image explodes (and float32 rounding decides it)
    n_comp = int(max(1, min(components, pooled.shape[0] // 4, pooled.shape[1] - 1)))
    pca = PCA(n_components=n_comp, svd_solver="full", random_state=seed).fit(pooled)
    mean_var = float(pooled.var(axis=0).mean())
    noise = float(max(pca.noise_variance_, 1e-3 * mean_var, 1e-12))
    variances = np.maximum(pca.explained_variance_, noise)
    density = InputDensity(pool, pca.mean_, pca.components_, variances, noise, 0.0)

    def run(module: ServingModule, x: torch.Tensor) -> dict[str, np.ndarray]:
        dev = next(module.parameters()).device
        parts: list[list[np.ndarray]] = [[], [], []]
        with torch.inference_mode():
            for xb in x.split(batch_size):
                for part, out in zip(parts, module(xb.to(dev))[1:], strict=True):
                    part.append(out.double().cpu().numpy())
        return {name: np.concatenate(part) for name, part in zip(SCORES, parts, strict=True)}

    raw = ServingModule(model, cfg, density).to(next(model.parameters()).device)
    with torch.inference_mode():
        log_d = torch.cat([raw.log_distance(xb.to(raw.mean.device)) for xb in x_train.split(batch_size)])
    density.center = float(np.median(log_d.double().cpu().numpy()))
    log_std = x_train.flatten(1).double().std(dim=1).clamp_min(1e-6).log()
    density.contrast_center = float(np.median(log_std.numpy()))
    module = ServingModule(model, cfg, density).to(raw.mean.device)
    val = run(module, x_val)

    q = 1 - (1 - recall) / len(SCORES)
    thresholds = {name: _quantile_threshold(val[name], q) for name in SCORES}
    flagged = np.any([val[name] > thresholds[name] for name in SCORES], axis=0)
    arrays = density.arrays()
    atomic_write_bytes(run_dir / OOD_ARRAYS, lambda tmp: save_file(arrays, tmp, metadata={"format": FORMAT}))
    record = {
        "format": FORMAT,
        "rule": "flag when any score is above its threshold",
        "recall_target": recall,
        "quantile": q,
        "thresholds": thresholds,
        "scores": {name: REFERENCES[name] for name in SCORES},
        "val_recall": float(1 - flagged.mean()),
        "fitted_on": {
            "manifest": str(manifest.resolve()),
            "manifest_sha256": file_sha256(manifest),
            "input_model": {"split": "train", "n": n_train, "components": n_comp, "pooled_side": pool},
            "thresholds": {"split": "val", "n": n_val},
            "unreadable": (bad_train + bad_val)[:20],
        },
        "weights_sha256": file_sha256(run_dir / WEIGHTS),
        "preprocess": cfg.model_dump(mode="json"),
        "arrays_sha256": file_sha256(run_dir / OOD_ARRAYS),
    }
    text = json.dumps(record, indent=2)
    atomic_write_bytes(run_dir / OOD_JSON, lambda tmp: Path(tmp).write_text(text))
    from popevit.serve.card import write_model_card

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
    from popevit.artifact import META, WEIGHTS, file_sha256

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
