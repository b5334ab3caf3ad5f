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
``RUN/ood.safetensors`` (the PPCA arrays). This module holds the records and is torch-free, so that the ONNX path
of ``popevit predict`` reads them without torch; the fit, which needs torch, is :mod:`popevit.serve.ood_fit`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

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


def quantile_threshold(values: np.ndarray, q: float) -> float:
    """The ``q`` quantile of ``values``, taken at an observed value (``method=\"higher\"``)."""
    return float(np.quantile(np.asarray(values, dtype=np.float64), q, method="higher"))
