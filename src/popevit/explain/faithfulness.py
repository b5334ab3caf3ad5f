"""Faithfulness of heatmaps, measured: deletion/insertion AUC, mask mass share and the pointing game.

- **Deletion and insertion** (Petsiuk, Das & Saenko, "RISE", BMVC 2018, arXiv:1806.07421, Sec. 4.1): pixels are
  removed (set to the baseline, here 0 = the per-image mean of the standardised input) in order of decreasing
  saliency, or inserted into a blurred copy of the image in the same order, and the target-class probability is
  recorded after each step. The area under that curve over the removed/inserted fraction in [0, 1] is the score:
  low deletion AUC and high insertion AUC mean the map found what the model uses. A random map is the baseline.
- **Mask mass share**: ``Σ map·mask / Σ map`` over the lesion mask; a map that ignores the lesion scores the mask's
  area fraction in expectation.
- **Pointing game** (Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016,
  arXiv:1608.00507): a hit when the map's maximum falls inside the mask (optionally dilated by a tolerance); a
  random point hits with probability equal to the area fraction.

Maps and masks here are at the model-input resolution (B, S, S); masks must be in the same preprocessed geometry
as the input (see :func:`popevit.explain.inputs.preprocess_mask`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.transforms.functional import gaussian_blur

from popevit.progress import track


@dataclass
class Curves:
    """Deletion/insertion curves of one batch.

    Attributes:
        fractions: (T,) removed/inserted pixel fractions, 0 to 1.
        deletion: (B, T) target probability after deleting the top fraction.
        insertion: (B, T) target probability after inserting the top fraction into the blurred image.
    """

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray

    @property
    def deletion_auc(self) -> np.ndarray:
        """(B,) trapezoidal AUC of the deletion curves."""
        return np.trapezoid(self.deletion, self.fractions, axis=1)

    @property
    def insertion_auc(self) -> np.ndarray:
        """(B,) trapezoidal AUC of the insertion curves."""
        return np.trapezoid(self.insertion, self.fractions, axis=1)


def blur(x: Tensor, sigma: float) -> Tensor:
    """Gaussian blur of (B, C, S, S) images (the insertion start point); kernel ``2 ceil(3 sigma) + 1``, capped."""
    k = 2 * math.ceil(3 * sigma) + 1
    k = min(k, 2 * ((min(x.shape[-2:]) - 1) // 2) - 1)
    return gaussian_blur(x, kernel_size=[max(k, 3)] * 2, sigma=[sigma, sigma]) if k >= 3 else x


def saliency_rank(maps: Tensor, seed: int = 0) -> Tensor:
    """Rank of every pixel by decreasing saliency, ties broken at random (seeded). (B, S, S) -> (B, S*S) long."""
    B = maps.shape[0]
    flat = maps.reshape(B, -1).double()  # (B, S*S)
    g = torch.Generator().manual_seed(seed)
    scale = flat.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    jitter = torch.rand(flat.shape, generator=g, dtype=torch.float64) * scale * 1e-9
    order = (flat + jitter).argsort(dim=1, descending=True)  # (B, S*S)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order).contiguous())
    return rank


@torch.no_grad()
def deletion_insertion(
    model: nn.Module,
    x: Tensor,
    maps: Tensor,
    target: Tensor,
    *,
    steps: int = 20,
    blur_sigma: float | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> Curves:
    """Deletion and insertion curves (Petsiuk et al. 2018).

    Args:
        model: eval-mode classifier.
        x: (B, C, S, S) model input (standardised; 0 is the per-image mean).
        maps: (B, S, S) saliency maps at input resolution.
        target: (B,) class whose probability is tracked.
        steps: curve points after the start (T = steps + 1).
        blur_sigma: insertion start blur in pixels; default S / 16.
        batch_size: forward-pass chunk size.
        seed: tie-breaking seed.

    Returns:
        :class:`Curves`.
    """
    if maps.shape != (x.shape[0], *x.shape[-2:]):
        raise ValueError(f"maps {tuple(maps.shape)} must be (B, S, S) = {(x.shape[0], *x.shape[-2:])}; upsample first")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    device = next(model.parameters()).device
    B, _, H, W = x.shape
    rank = saliency_rank(maps.cpu(), seed).to(device)  # (B, H*W)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = torch.as_tensor(np.round(fractions * H * W), device=device)  # (T,)
    x = x.to(device)
    blurred = blur(x, blur_sigma if blur_sigma is not None else H / 16)
    deletion = np.zeros((B, steps + 1))
    insertion = np.zeros((B, steps + 1))
    for i in track(range(B), f"deletion/insertion curves of {B} images"):
        top = (rank[i][None, :] < counts[:, None]).view(-1, 1, H, W)  # (T, 1, H, W) pixels removed/inserted
        deleted = torch.where(top, torch.zeros_like(x[i]), x[i])  # (T, C, H, W)
        inserted = torch.where(top, x[i], blurred[i])  # (T, C, H, W)
        both = torch.cat([deleted, inserted])  # (2T, C, H, W)
        probs = torch.cat([model(chunk).softmax(-1) for chunk in both.split(batch_size)])  # (2T, K)
        p = probs[:, int(target[i])].float().cpu().numpy()
        deletion[i], insertion[i] = p[: steps + 1], p[steps + 1 :]
    return Curves(fractions, deletion, insertion)


def mask_mass(maps: Tensor, masks: Tensor) -> np.ndarray:
    """Share of each map's mass inside its mask: (B, S, S) maps, (B, S, S) bool masks -> (B,) in [0, 1]."""
    m = maps.clamp_min(0).double()
    total = m.sum(dim=(1, 2)).clamp_min(1e-12)
    return ((m * masks.double()).sum(dim=(1, 2)) / total).numpy()


def area_fraction(masks: Tensor) -> np.ndarray:
    """Fraction of each (S, S) mask that is lesion: the chance level of mask mass and pointing game. -> (B,)."""
    return masks.double().mean(dim=(1, 2)).numpy()


def pointing_game(maps: Tensor, masks: Tensor, tolerance: int = 0) -> np.ndarray:
    """Whether each map's maximum lies in its mask dilated by ``tolerance`` pixels (Zhang et al. 2016). -> (B,) bool."""
    B, H, W = maps.shape
    idx = maps.reshape(B, -1).argmax(dim=1)
    r, c = (idx // W).numpy(), (idx % W).numpy()
    hits = np.zeros(B, bool)
    for i in range(B):
        m = masks[i].numpy().astype(bool)
        if tolerance > 0:
            r0, r1 = max(0, r[i] - tolerance), min(H, r[i] + tolerance + 1)
            c0, c1 = max(0, c[i] - tolerance), min(W, c[i] + tolerance + 1)
            yy, xx = np.mgrid[r0:r1, c0:c1]
            near = (yy - r[i]) ** 2 + (xx - c[i]) ** 2 <= tolerance**2
            hits[i] = bool(m[yy[near], xx[near]].any())
        else:
            hits[i] = bool(m[r[i], c[i]])
    return hits
