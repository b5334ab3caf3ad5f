"""Train-time augmentation and the deterministic eval transform, on tensors, batched.

Input: the cached image as float in [0, 1], one image (1, S, S) or a batch (B, 1, S, S). Output: the model input,
float (C, S, S) or (B, C, S, S), per-image standardised (:func:`popevit.data.preprocess.standardize`).

All geometry (random resized crop, rotation, translation, scale, shear, horizontal flip) is composed into one
affine matrix per image and applied with a single ``grid_sample`` over the batch, filled with each image's own
background level (corner median). Per-image ``torchvision.transforms.v2`` calls cost ~2 ms per 128 px image on CPU
(``affine`` builds a grid per call), far from the 3000 images/s target; one batched warp is ~20x cheaper per image.
:meth:`popevit.data.dataset.ImageDataset.__getitems__` hands whole batches to the transform. Random parameters are
drawn from torch's global RNG (seeded per DataLoader worker by PyTorch), independently per image.

Order: geometry, contrast and acquisition randomisation (:class:`DomainRandomization`) and gamma on [0, 1] images;
normalise (per image, or the fixed affine map, :func:`normalize`); brightness/contrast and Gaussian noise in std units
(as in :class:`popevit.config.AugmentConfig`); channel replication last, so replicated channels stay identical.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from popevit.config import AugmentConfig, DomainConfig, PreprocessConfig


def _u(n: int, lo: float, hi: float) -> torch.Tensor:
    """(n,) uniform draws in [lo, hi] from the global RNG."""
    return torch.rand(n) * (hi - lo) + lo


def _standardize(x: torch.Tensor) -> torch.Tensor:
    """Per-image zero mean, unit variance (unbiased, as ``Tensor.std``) over (C, H, W) of a (B, C, H, W) batch.

    From the two sums ``sum x`` and ``sum x^2`` (vectorised reductions) instead of ``torch.std_mean``, whose CPU
    kernel was 25% of the loader's time and 5x slower at 128 px; inputs are [0, 1] images (or standardised ones),
    so the one-pass variance loses nothing measurable in float32 (max deviation ~1e-6).
    """
    n = x[0].numel()
    s1 = x.sum(dim=(1, 2, 3), keepdim=True)
    s2 = (x * x).sum(dim=(1, 2, 3), keepdim=True)
    mean = s1 / n
    var = ((s2 - s1 * mean) / max(n - 1, 1)).clamp_min(0.0)
    return (x - mean) * var.sqrt().clamp_min(1e-6).reciprocal()


FIXED_MEAN, FIXED_STD = 0.5, 0.25  # normalize: fixed maps the 0..1 image to (x - 0.5) / 0.25, about [-2, 2]


def normalize(x: torch.Tensor, mode: str = "image") -> torch.Tensor:
    """(B, C, H, W) [0, 1] images -> model scale: ``image`` = per-image zero mean and unit variance
    (:func:`_standardize`), ``fixed`` = the same affine map for every image."""
    return _standardize(x) if mode == "image" else (x - FIXED_MEAN) / FIXED_STD


def _replicate(x: torch.Tensor, in_chans: int) -> torch.Tensor:
    return x.expand(-1, in_chans, -1, -1).contiguous() if in_chans != 1 else x


def warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Resample (B, 1, S, S) through per-image affine maps ``theta`` (B, 2, 3) (output -> input, normalised coords).

    Outside the source the image's corner median (its background) is used, not zero: backgrounds may be white.
    """
    b, _, h, w = x.shape
    ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h).view(1, h, 1)
    xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w).view(1, 1, w)
    t = theta.view(b, 2, 3, 1, 1)
    grid = torch.empty(b, h, w, 2)  # (B, H, W, 2); one full-size op per coordinate
    for k in range(2):
        torch.add(t[:, k, 0] * xs + t[:, k, 2], t[:, k, 1] * ys, out=grid[..., k])
    corners = torch.stack([x[:, :, 0, 0], x[:, :, 0, -1], x[:, :, -1, 0], x[:, :, -1, -1]], dim=-1)  # (B, 1, 4)
    fill = corners.median(dim=-1).values.view(b, 1, 1, 1)
    out = F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out + fill


class _Batched(nn.Module):
    """Accept (1, S, S) or (B, 1, S, S); subclasses implement :meth:`batch` on (B, 1, S, S)."""

    batched = True  # ImageDataset.__getitems__ may pass whole batches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            return self.batch(x.unsqueeze(0))[0]
        return self.batch(x)

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class EvalTransform(_Batched):
    """Deterministic: normalise (``image`` or ``fixed``, :func:`normalize`), replicate to ``in_chans``."""

    def __init__(self, in_chans: int = 1, normalize: str = "image") -> None:
        super().__init__()
        self.in_chans = in_chans
        self.mode = normalize

    def batch(self, x: torch.Tensor) -> torch.Tensor:
        return _replicate(normalize(x, self.mode), self.in_chans)


# JPEG's luminance quantisation table (ITU-T T.81, Annex K, Table K.1), quality 50.
_JPEG_LUMA = torch.tensor(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=torch.float32,
)


def _dct_matrix(n: int = 8) -> torch.Tensor:
    """Orthonormal DCT-II matrix (n, n): ``D @ block @ D.T`` is the 2-D DCT of a block."""
    k = torch.arange(n, dtype=torch.float32)
    d = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2 / n)
    d[0] /= math.sqrt(2)
    return d


def random_curve(x: torch.Tensor, points: int, nonmonotone: float) -> torch.Tensor:
    """Map each [0, 1] image (B, 1, H, W) through its own random piecewise-linear curve of ``points`` knots; a share
    ``nonmonotone`` of the curves take independent uniform knot values, the rest increasing ones (cumulated random
    steps), so that both contrast stretches and reorderings of tissue brightness (T1 <-> T2-like) occur."""
    b = x.shape[0]
    steps = torch.rand(b, points - 1) + 0.05
    rising = torch.cat([torch.zeros(b, 1), steps.cumsum(1)], dim=1)
    rising = rising / rising[:, -1:]  # (B, K), 0 .. 1
    lut = torch.where((torch.rand(b) < nonmonotone)[:, None], torch.rand(b, points), rising)  # (B, K)
    pos = x.clamp(0, 1).reshape(b, -1) * (points - 1)  # (B, HW)
    lo = pos.floor().clamp(max=points - 2)
    frac = pos - lo
    lo = lo.long()
    y = torch.gather(lut, 1, lo) * (1 - frac) + torch.gather(lut, 1, lo + 1) * frac
    return y.view_as(x)


def match_histograms(x: torch.Tensor, ref: torch.Tensor, levels: int = 256) -> torch.Tensor:
    """Give each [0, 1] image of (B, 1, H, W) ``x`` the histogram of the same-index image of ``ref``.

    Quantile matching on ``levels`` grey levels: each level of ``x`` goes to the value of ``ref`` at that level's
    mid-rank quantile, so equal pixels (a flat background) stay equal instead of being spread by rank.
    """
    b = x.shape[0]
    grey = (x.clamp(0, 1).reshape(b, -1) * (levels - 1)).round().long()  # (B, HW)
    n = grey.shape[1]
    hist = torch.zeros(b, levels).scatter_add_(1, grey, torch.ones(b, n))  # (B, L)
    quantile = (hist.cumsum(1) - hist / 2) / n  # (B, L) mid-rank of each level
    values = ref.reshape(b, -1).sort(dim=1).values  # (B, HW)
    lut = torch.gather(values, 1, (quantile * (n - 1)).round().long().clamp(0, n - 1))  # (B, L)
    return torch.gather(lut, 1, grey).view_as(x)


def bias_field(x: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """Multiply (B, 1, H, W) by ``exp(s * f)``, ``f`` a smooth unit-variance field (a 4x4 grid upsampled
    bicubically), normalised to mean 1; ``strength`` (B,) is ``s``."""
    b, _, h, w = x.shape
    field = F.interpolate(torch.randn(b, 1, 4, 4), size=(h, w), mode="bicubic", align_corners=True)
    field = torch.exp(strength.view(b, 1, 1, 1) * field)
    return x * field / field.mean(dim=(2, 3), keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of (B, 1, H, W) with its own Gaussian ``sigma`` (B,) pixels (separable, reflect padding)."""
    b, _, h, w = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t[None, :] / sigma.clamp_min(1e-3)[:, None]) ** 2)
    k = k / k.sum(dim=1, keepdim=True)  # (B, 2r+1)
    y = F.pad(x.reshape(1, b, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(b, 1, 1, -1), groups=b)  # along the width
    y = F.conv2d(y, k.view(b, 1, -1, 1), groups=b)  # along the height
    return y.view(b, 1, h, w)


def down_up(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Lose resolution: resample each image of (B, 1, H, W) down by its ``factor`` (B,) (antialiased bilinear, factor
    rounded to a step of 0.5) and back up to (H, W)."""
    h, w = x.shape[-2:]
    out = x.clone()
    steps = (factor * 2).round() / 2
    for f in steps.unique().tolist():
        if f <= 1:
            continue
        idx = (steps == f).nonzero().flatten()
        small = F.interpolate(x[idx], size=(max(2, round(h / f)), max(2, round(w / f))), mode="bilinear",
                              antialias=True, align_corners=False)  # fmt: skip
        out[idx] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return out


def jpeg_compress(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """Simulate a JPEG re-encoding of each [0, 1] image (B, 1, H, W) at its ``quality`` (B,) in 1..100: 8x8 block DCT,
    quantisation with the standard luminance table scaled as libjpeg does, inverse DCT. No chroma, no entropy coding
    (lossless); images whose sides are not multiples of 8 are padded by replication."""
    b, _, h, w = x.shape
    ph, pw = -h % 8, -w % 8
    y = F.pad(x, (0, pw, 0, ph), mode="replicate") * 255 - 128
    hh, ww = y.shape[-2:]
    blocks = y.view(b, hh // 8, 8, ww // 8, 8).permute(0, 1, 3, 2, 4)  # (B, h/8, w/8, 8, 8)
    q = quality.clamp(1, 100).float()
    scale = torch.where(q < 50, 5000 / q, 200 - 2 * q).view(b, 1, 1, 1, 1)
    table = ((_JPEG_LUMA * scale + 50) / 100).floor().clamp(1, 255)  # (B, 1, 1, 8, 8)
    d = _dct_matrix()
    coef = d @ blocks @ d.T
    blocks = d.T @ ((coef / table).round() * table) @ d
    y = blocks.permute(0, 1, 3, 2, 4).reshape(b, 1, hh, ww)[..., :h, :w]
    return ((y + 128) / 255).clamp(0, 1)


class DomainRandomization(nn.Module):
    """Contrast and acquisition randomisation of [0, 1] image batches (B, 1, S, S), per image, batched.

    The idea is SynthSeg's (Billot et al. 2023, Medical Image Analysis 86:102789, arXiv:2107.09559): a model that
    sees every image under random contrast and acquisition artefacts cannot use them, so it has to use anatomy. With
    BigAug's transformation stack (Zhang et al. 2020, IEEE TMI, arXiv:1906.07613) for the artefacts. In order, each
    with probability ``cfg.p`` when switched on: random intensity curve, inversion, histogram matching to another
    image of the batch, multiplicative bias field, Gaussian blur, down-up resampling, Gaussian noise, JPEG
    re-encoding. Strengths are drawn uniformly between 0 and the configured maximum. Random numbers come from torch's
    global generator, which popevit reseeds per epoch (exact resume).
    """

    def __init__(self, cfg: DomainConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def _pick(self, b: int) -> torch.Tensor:
        return (torch.rand(b) < self.cfg.p).nonzero().flatten()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, S, S) in [0, 1] -> same
        c, b = self.cfg, x.shape[0]
        x = x.clone()
        if c.curve and len(i := self._pick(b)):
            x[i] = random_curve(x[i], c.curve_points, c.curve_nonmonotone)
        if c.invert and len(i := self._pick(b)):
            x[i] = 1 - x[i]
        if c.hist_match and b > 1 and len(i := self._pick(b)):
            ref = (i + torch.randint(1, b, (len(i),))) % b  # another image of the batch
            x[i] = match_histograms(x[i], x[ref])
        if c.bias_field > 0 and len(i := self._pick(b)):
            x[i] = bias_field(x[i], torch.rand(len(i)) * c.bias_field).clamp(0, 1)
        if c.blur > 0 and len(i := self._pick(b)):
            x[i] = gaussian_blur(x[i], torch.rand(len(i)) * c.blur)
        if c.resample > 1 and len(i := self._pick(b)):
            x[i] = down_up(x[i], 1 + torch.rand(len(i)) * (c.resample - 1))
        if c.noise > 0 and len(i := self._pick(b)):
            x[i] = (x[i] + torch.randn_like(x[i]) * (torch.rand(len(i)) * c.noise).view(-1, 1, 1, 1)).clamp(0, 1)
        if c.jpeg is not None and len(i := self._pick(b)):
            lo, hi = c.jpeg
            x[i] = jpeg_compress(x[i], torch.randint(lo, hi + 1, (len(i),)))
        return x


class TrainTransform(_Batched):
    """Random augmentation per :class:`popevit.config.AugmentConfig` (see the module docstring for the order)."""

    def __init__(self, aug: AugmentConfig, in_chans: int = 1, normalize: str = "image") -> None:
        super().__init__()
        self.aug = aug
        self.in_chans = in_chans
        self.mode = normalize
        self.domain = DomainRandomization(aug.domain) if aug.domain.active else None
        a = aug
        self.geometric = (
            a.random_resized_crop is not None
            or a.rotation > 0
            or a.translate > 0
            or tuple(a.scale) != (1.0, 1.0)
            or a.shear > 0
            or a.hflip > 0
        )

    def theta(self, b: int) -> torch.Tensor:
        """(B, 2, 3) output -> input maps: crop (C) after the inverse of flip-scale-shear-rotate-translate (M)."""
        a = self.aug
        eye = torch.eye(3).repeat(b, 1, 1)
        m = eye.clone()  # forward map M = T R Sh S Flip
        flip = torch.where(torch.rand(b) < a.hflip, -1.0, 1.0)
        zoom = _u(b, *a.scale)
        shx, shy = (torch.tan(torch.deg2rad(_u(b, -a.shear, a.shear))) for _ in range(2))
        ang = torch.deg2rad(_u(b, -a.rotation, a.rotation))
        c, s = torch.cos(ang), torch.sin(ang)
        rot = eye.clone()
        rot[:, 0, 0], rot[:, 0, 1], rot[:, 1, 0], rot[:, 1, 1] = c, -s, s, c
        shear = eye.clone()
        shear[:, 0, 1], shear[:, 1, 0] = shx, shy
        scale_flip = eye.clone()
        scale_flip[:, 0, 0], scale_flip[:, 1, 1] = zoom * flip, zoom
        m = rot @ shear @ scale_flip
        m[:, 0, 2] = _u(b, -2 * a.translate, 2 * a.translate)  # normalised coords span 2
        m[:, 1, 2] = _u(b, -2 * a.translate, 2 * a.translate)
        theta = torch.linalg.inv(m)
        if a.random_resized_crop is not None:
            area = _u(b, *a.random_resized_crop)
            ratio = torch.exp(_u(b, math.log(0.9), math.log(1.1)))
            cw, ch = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
            crop = eye.clone()
            crop[:, 0, 0], crop[:, 1, 1] = cw, ch
            crop[:, 0, 2], crop[:, 1, 2] = (torch.rand(b) * 2 - 1) * (1 - cw), (torch.rand(b) * 2 - 1) * (1 - ch)
            theta = crop @ theta
        return theta[:, :2]

    def batch(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, S, S) in [0, 1] -> (B, C, S, S)
        a, b = self.aug, x.shape[0]
        if self.geometric:
            x = warp(x, self.theta(b))
        if self.domain is not None:
            x = self.domain(x.clamp(0, 1))
        if a.gamma > 0:
            x = x.clamp(0, 1).pow(torch.exp(_u(b, -a.gamma, a.gamma)).view(b, 1, 1, 1))
        x = normalize(x, self.mode)
        if a.brightness > 0 or a.contrast > 0:
            x = x * (1 + _u(b, -a.contrast, a.contrast)).view(b, 1, 1, 1)
            x = x + _u(b, -a.brightness, a.brightness).view(b, 1, 1, 1)
        if a.noise_std > 0:
            x = x + torch.randn_like(x) * a.noise_std
        return _replicate(x, self.in_chans)


def build_eval_transform(cfg: PreprocessConfig) -> EvalTransform:
    """Deterministic: normalise and replicate channels. [0, 1] (1, S, S) -> (C, S, S); batches too."""
    return EvalTransform(cfg.in_chans, cfg.normalize)


def build_train_transform(aug: AugmentConfig, cfg: PreprocessConfig) -> nn.Module:
    """Random augmentation from ``aug``; the eval transform when ``aug.enabled`` is false.

    Args:
        aug: augmentation settings.
        cfg: preprocessing settings (channels).

    Returns:
        A module mapping [0, 1] (1, S, S) or (B, 1, S, S) to standardised (C, S, S) or (B, C, S, S).
    """
    if not aug.enabled:
        return build_eval_transform(cfg)
    return TrainTransform(aug, cfg.in_chans, cfg.normalize)
