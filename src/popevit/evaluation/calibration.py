"""Temperature scaling (Guo et al. 2017, "On calibration of modern neural networks", arXiv:1706.04599).

One scalar ``T`` divides the logits; it is fitted by minimising the negative log-likelihood on held-out labelled
images (the run's validation split, never the images being evaluated). ``T`` leaves every arg-max, so accuracy,
balanced accuracy and F1 are unchanged; confidence (ECE, log loss) and, slightly, the one-vs-rest rankings behind
macro AUROC can move.

It works from stored probabilities: ``log p`` equals the logits up to a per-image constant, which softmax ignores,
so ``softmax(log p / T) == softmax(z / T)``.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

EPS = float(np.finfo(np.float32).tiny)  # the smallest normal float32: below it a float32 softmax is subnormal or 0
LOG_T_BOUNDS = (-4.0, 4.0)  # T in [0.018, 55]


def _scaled_log_proba(proba: np.ndarray, temperature: float) -> np.ndarray:
    """(n, K) log-probabilities of the logits divided by ``temperature`` (``log p`` stands in for the logits)."""
    logp = np.log(np.clip(np.asarray(proba, dtype=np.float64), EPS, 1.0))
    return log_softmax(logp / temperature, axis=1)


def apply_temperature(proba: np.ndarray, temperature: float) -> np.ndarray:
    """(n, K) probabilities -> the probabilities of logits divided by ``temperature``."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return np.exp(_scaled_log_proba(proba, temperature))


def nll(y: np.ndarray, proba: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes after temperature scaling."""
    return float(-_scaled_log_proba(proba, temperature)[np.arange(len(y)), y].mean())


def fit_temperature(y: np.ndarray, proba: np.ndarray) -> float:
    """The ``T`` minimising the NLL of ``y`` under ``apply_temperature(proba, T)`` (1-D bounded search on log T)."""
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0 or len(y) != len(proba):
        raise ValueError(f"need one label per row of probabilities to fit a temperature, got {len(y)} and {len(proba)}")
    res = minimize_scalar(lambda t: nll(y, proba, float(np.exp(t))), bounds=LOG_T_BOUNDS, method="bounded")
    log_t, best = float(res.x), float(res.fun)
    for end in LOG_T_BOUNDS:  # the NLL may be flat to machine precision near an end: then that end is the fit
        at_end = nll(y, proba, float(np.exp(end)))
        if at_end <= best:
            log_t, best = end, at_end
    t = float(np.exp(log_t))
    if temperature_at_bound(t):
        toward = "0 (every image right with a margin)" if log_t < 0 else "infinity (predictions no better than chance)"
        warnings.warn(
            f"the fitted temperature T = {t:.3g} sits at the search bound: the validation NLL keeps falling as T goes "
            f"to {toward}, so T is not identified and the scaled probabilities are degenerate. Report the "
            "uncalibrated metrics, or fit T on a larger validation split the model does not separate perfectly.",
            stacklevel=2,
        )
    return t


def temperature_at_bound(temperature: float) -> bool:
    """Whether ``fit_temperature`` stopped at an end of its search range (T not identified by the data)."""
    log_t = np.log(temperature)
    return bool(min(log_t - LOG_T_BOUNDS[0], LOG_T_BOUNDS[1] - log_t) < 1e-3)
