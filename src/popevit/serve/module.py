"""The served graph: preprocessed [0, 1] images in, logits and out-of-distribution scores out.

``ServingModule`` is what ``popevit predict`` runs with PyTorch and what ``popevit export`` writes to ONNX and
torch.export, so the three cannot drift apart. Everything after the numpy/PIL preprocessing
(:func:`popevit.data.preprocess.preprocess_image` -> uint8 / 255) lives inside it:

1. the run's eval transform (:func:`popevit.data.transforms.build_eval_transform`: per-image standardisation,
   channel replication), then the model -> ``logits`` (B, K);
2. ``energy`` (B,) = ``-logsumexp(logits)`` (Liu et al. 2020, arXiv:2010.03759, Eq. 4 with T = 1);
3. ``input_score`` (B,): how atypical the preprocessed input is for the training images (see
   :mod:`popevit.serve.ood`), NaN when the run has no fitted input model;
4. ``contrast_score`` (B,): how atypical its intensity spread is (a flat field has none), NaN likewise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from popevit.config import PreprocessConfig
from popevit.serve.ood import InputDensity

OUTPUTS = ("logits", "energy", "input_score", "contrast_score")


class ServingModule(nn.Module):
    """Eval transform + model + OOD scores, for (B, 1, S, S) float inputs in [0, 1].

    Args:
        model: the run's classifier, mapping (B, C, S, S) standardised images to (B, K) logits (eval mode).
        preprocess: the run's preprocessing settings (channels, and whatever the eval transform reads).
        density: the fitted input model, or None.
    """

    def __init__(self, model: nn.Module, preprocess: PreprocessConfig, density: InputDensity | None = None) -> None:
        from popevit.data.transforms import build_eval_transform

        super().__init__()
        self.model = model.eval()
        self.transform = build_eval_transform(preprocess)
        self.pool = 0
        if density is not None:
            self.pool = int(density.pool)
            self.register_buffer("mean", torch.as_tensor(density.mean, dtype=torch.float32))  # (d,)
            self.register_buffer("components", torch.as_tensor(density.components, dtype=torch.float32))  # (k, d)
            self.register_buffer("variances", torch.as_tensor(density.variances, dtype=torch.float32))  # (k,)
            self.register_buffer("noise_variance", torch.tensor(float(density.noise_variance)))
            self.register_buffer("center", torch.tensor(float(density.center)))
            self.register_buffer("contrast_center", torch.tensor(float(density.contrast_center)))
        self.eval()  # serving only: dropout and stochastic depth off, also when exported

    def log_distance(self, x: Tensor) -> Tensor:
        """log of the PPCA Mahalanobis distance of the average-pooled input: (B, 1, S, S) -> (B,)."""
        side = x.shape[-1]
        if side % self.pool:
            raise ValueError(
                f"input side {side} is not a multiple of the OOD input model's pooled side {self.pool}; "
                f"serve the model at its training size"
            )
        k = side // self.pool
        v = (F.avg_pool2d(x, k) if k > 1 else x).flatten(1)  # (B, d)
        c = v - self.mean
        z = c @ self.components.T  # (B, k)
        r = c - z @ self.components  # (B, d): the part the k components do not explain
        dist = (z * z / self.variances).sum(-1) + (r * r).sum(-1) / self.noise_variance
        return dist.clamp_min(1e-12).log()

    def input_score(self, x: Tensor) -> Tensor:
        """Typicality: ``|log distance - its median on the training images|``, (B, 1, S, S) -> (B,)."""
        return (self.log_distance(x) - self.center).abs()

    def contrast_score(self, x: Tensor) -> Tensor:
        """Typicality of the intensity spread: ``|log std(x) - its median on the training images|``, (B,)."""
        return (x.flatten(1).std(dim=1).clamp_min(1e-6).log() - self.contrast_center).abs()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(B, 1, S, S) in [0, 1] -> ``(logits (B, K), energy (B,), input_score (B,), contrast_score (B,))``."""
        logits = self.model(self.transform(x))
        energy = -torch.logsumexp(logits.float(), dim=-1)
        if not self.pool:
            nan = torch.full_like(energy, float("nan"))
            return logits, energy, nan, nan
        return logits, energy, self.input_score(x), self.contrast_score(x)
