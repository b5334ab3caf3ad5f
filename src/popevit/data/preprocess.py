"""Deterministic preprocessing, identical for every class: head crop, pad to square, resize, intensity normalisation.

The Kaggle Brain Tumor MRI set gives its class away by image size and framing (tumour images are almost all
512x512, no-tumour images almost never), so every image goes through the same geometry before the model sees it:

1. grayscale (any mode, see :func:`popevit.data.decode.to_gray`);
2. foreground crop: the background level is the median of the image border (works for black *and* white
   backgrounds); pixels of a lightly smoothed copy (<= 128 px, for speed) differing from it by more than 12% of the
   robust (p1-p99) range are foreground; the crop is the bounding box of the largest 8-connected foreground
   component (text labels and specks are dropped), refined at full resolution. The crop adds a margin twice: 2% of
   the head box's longer side, then 2% of that enlarged box's longer side again (about 4% in all; kept as is because
   every cached array and recorded result depends on it). A second pass strips frames (some Kaggle no-tumour scans
   are a black field on a white page);
3. pad to square with the background level (centred);
4. resize to ``img_size`` (PIL bilinear, which low-pass filters when downscaling);
5. percentile clip (``clip_percentiles``) and rescale to 0..255 (uint8): what the decode-once cache stores;
   ``rescale: false`` keeps the decoded 8-bit grey levels instead;
6. :func:`to_tensor`: per-image standardisation (zero mean, unit variance; Nyúl & Udupa 1999 motivate per-scan
   normalisation for MRI, whose intensities have no absolute scale), or with ``normalize: fixed`` the same affine
   map ``(x - 0.5) / 0.25`` for every image, and replication to 3 channels if asked.

``crop: max_fraction`` replaces steps 2-3 with what simple recipes do: the bounding box of the pixels above 10% of
the maximum, padded with 0 (``scripts/plain_resnet18.py``; docs/experiments/source_confound.md compares the two).

With ``head_mask`` steps 2-5 change: after the first resize the head is segmented (:func:`head_mask`: the largest
foreground component with its holes filled, optionally shrunk by ``head_erode`` of its size to strip scalp and skull),
the square is cropped tight to it (no margin), padded and resized again, the percentile clip is taken over the head's
pixels only, and everything outside the head is set to 0. The border, the frame, burnt-in text and the background's
noise then carry nothing of the image's source.

torch is a heavy import and only :func:`to_tensor` needs it: it is imported there, so the data layer (splits,
audits, the decode-once cache) runs without it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image
from scipy import ndimage

from popevit.config import PreprocessConfig
from popevit.data.decode import decode_bytes, to_gray

if TYPE_CHECKING:
    import torch

# Bump when the algorithm changes: the decode-once cache key includes it.
PREPROCESS_VERSION = 2
_FG_FRACTION = 0.12  # foreground = |x - background| > 12% of the (p1, p99) range
_MARGIN = 0.02  # crop margin, fraction of the box side


def background_level(gray: np.ndarray) -> float:
    """Median of a 2-pixel-wide frame around the image: the background intensity, dark or bright."""
    b = max(1, min(gray.shape) // 100 + 1)
    border = np.concatenate([gray[:b].ravel(), gray[-b:].ravel(), gray[:, :b].ravel(), gray[:, -b:].ravel()])
    return float(np.median(border))


def foreground_box(gray: np.ndarray, margin: float = _MARGIN) -> tuple[int, int, int, int]:
    """Bounding box ``(top, left, bottom, right)`` (exclusive ends) of the head in a (H, W) grayscale image.

    Args:
        gray: (H, W) grayscale image.
        margin: margin added on every side, as a fraction of the box's longer side.

    Returns the full image when no clear foreground is found (blank or uniform images).
    """
    h, w = gray.shape
    step = max(1, int(np.ceil(max(h, w) / 128)))
    small = ndimage.gaussian_filter(gray[::step, ::step], 1.0)  # noise would fragment thin rings (scalp, skull)
    bg = background_level(small)
    lo, hi = np.percentile(small, (1, 99))
    if hi - lo <= 1e-6:
        return 0, 0, h, w
    fg = np.abs(small - bg) > _FG_FRACTION * (hi - lo)
    labels, n = ndimage.label(fg, structure=np.ones((3, 3), bool))
    if n == 0:
        return 0, 0, h, w
    sizes = ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))
    keep = labels == (int(np.argmax(sizes)) + 1)
    rows, cols = np.flatnonzero(keep.any(axis=1)), np.flatnonzero(keep.any(axis=0))
    t, b = rows[0] * step, min(h, (rows[-1] + 1) * step)
    l, r = cols[0] * step, min(w, (cols[-1] + 1) * step)
    if step > 1:  # refine the coarse box at full resolution, within one coarse cell of it
        t, l = max(0, t - step), max(0, l - step)
        b, r = min(h, b + step), min(w, r + step)
        full = np.abs(gray[t:b, l:r] - bg) > _FG_FRACTION * (hi - lo)
        fr, fc = np.flatnonzero(full.any(axis=1)), np.flatnonzero(full.any(axis=0))
        if len(fr) and len(fc):
            t, b, l, r = t + fr[0], t + fr[-1] + 1, l + fc[0], l + fc[-1] + 1
    m = round(margin * max(b - t, r - l))
    return max(0, t - m), max(0, l - m), min(h, b + m), min(w, r + m)


def _uniform_border(gray: np.ndarray, tol: float) -> bool:
    """True when >= 90% of the border pixels lie within ``tol`` of their median (a plain field, not tissue)."""
    b = max(1, min(gray.shape) // 100 + 1)
    border = np.concatenate([gray[:b].ravel(), gray[-b:].ravel(), gray[:, :b].ravel(), gray[:, -b:].ravel()])
    return bool(np.mean(np.abs(border - np.median(border)) <= tol) >= 0.9)


def head_mask(gray: np.ndarray, erode: float = 0.0) -> np.ndarray:
    """The head in a (S, S) grayscale image: the largest 8-connected foreground component (the rule of
    :func:`foreground_box`) with its holes filled, shrunk by ``erode`` times the longer side of its box.

    Returns:
        (S, S) bool; all True when no clear foreground is found (blank or uniform images).
    """
    small = ndimage.gaussian_filter(gray, 1.0)
    bg = background_level(small)
    lo, hi = np.percentile(small, (1, 99))
    everything = np.ones(gray.shape, dtype=bool)
    if hi - lo <= 1e-6:
        return everything
    fg = np.abs(small - bg) > _FG_FRACTION * (hi - lo)
    labels, n = ndimage.label(fg, structure=np.ones((3, 3), bool))
    if n == 0:
        return everything
    sizes = ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))
    mask = ndimage.binary_fill_holes(labels == (int(np.argmax(sizes)) + 1))
    if erode > 0:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        radius = erode * max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
        shrunk = ndimage.distance_transform_edt(mask) > radius
        mask = shrunk if shrunk.any() else mask
    return mask


def _head_crop(square: np.ndarray, size: int) -> SquareCrop:
    """The tight crop of ``head_mask``: the head's box in the (L, L) square (found at model size, no margin)."""
    mask = head_mask(resize(square, size))
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    scale = square.shape[0] / size
    t, b = int(rows[0] * scale), int(np.ceil((rows[-1] + 1) * scale))
    l, r = int(cols[0] * scale), int(np.ceil((cols[-1] + 1) * scale))
    inner = square_crop(square[t:b, l:r], crop_foreground=False)
    it, il, ib, ir = inner.box
    return replace(inner, box=(t + it, l + il, t + ib, l + ir))


@dataclass(frozen=True)
class SquareCrop:
    """One step of the model input's framing: a crop of an (H, W) array, padded to a centred square.

    Attributes:
        box: ``(top, left, bottom, right)`` of the crop in the input's pixels (exclusive ends).
        side: side L of the padded square.
        offset: ``(top, left)`` of the crop inside the square.
        fill: the level of the padding: the crop's background (:func:`background_level`).
    """

    box: tuple[int, int, int, int]
    side: int
    offset: tuple[int, int]
    fill: float

    def apply(self, arr: np.ndarray, fill: float | None = None) -> np.ndarray:
        """Crop ``arr`` (H, W) and pad it to (L, L) with ``fill`` (default: the image's own background level)."""
        t, l, b, r = self.box
        crop = arr[t:b, l:r]
        h, w = crop.shape
        if h == w:
            return crop
        out = np.full((self.side, self.side), self.fill if fill is None else fill, dtype=np.float32)
        out[self.offset[0] : self.offset[0] + h, self.offset[1] : self.offset[1] + w] = crop
        return out


@dataclass(frozen=True)
class Framing:
    """Where the model input's pixels come from: crops of the decoded grayscale image, each padded to a square, then
    one resize to S. Applied to a lesion mask it gives the mask in the model input's geometry.

    Attributes:
        crops: the crop-and-pad steps in order; the first box is in the original image's pixels, each later one in
            the previous step's square. One step, or two with ``head_mask`` (the tight crop to the head).
        size: S, the side of the model input.
    """

    crops: tuple[SquareCrop, ...]
    size: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The crop in the original image's pixels ``(top, left, bottom, right)``: the part the model sees."""
        t, l, b, r = self.crops[0].box
        for prev, step in zip(self.crops, self.crops[1:], strict=False):
            (ot, ol), (st, sl, sb, sr) = prev.offset, step.box  # the previous crop sits at ``offset``, 1:1 in pixels
            t, l, b, r = t + max(0, st - ot), l + max(0, sl - ol), min(b, t + sb - ot), min(r, l + sr - ol)
        return t, l, b, r

    @property
    def scale(self) -> float:
        """Model-input pixels per original pixel: crops and pads keep the scale, the final resize sets it."""
        return self.size / self.crops[-1].side

    def apply(self, arr: np.ndarray, fill: float | None = None) -> np.ndarray:
        """(H, W) array in the original image's pixels -> (S, S) float32 in the model input's.

        Args:
            arr: the image itself, or anything drawn on it (a lesion mask as 0/1).
            fill: padding level; default the image's own background (reproduces the preprocessing), 0 for a mask.
        """
        out = np.asarray(arr, np.float32)
        for step in self.crops:
            out = step.apply(out, fill)
        return resize(out, self.size)


@dataclass(frozen=True)
class FramedImage:
    """What :func:`preprocess_framed` returns: the uint8 (S, S) model input and the :class:`Framing` that made it."""

    image: np.ndarray
    framing: Framing


def square_crop(gray: np.ndarray, crop_foreground: bool = True) -> SquareCrop:
    """The foreground crop (optional) and centred pad to a square of an (H, W) grayscale image (module docstring,
    steps 2-3)."""
    rows, cols = np.arange(gray.shape[0]), np.arange(gray.shape[1])  # the current view's pixels in ``gray``
    if crop_foreground:
        for _ in range(3):  # later passes look inside a frame, e.g. a black scan field on a white page
            view = gray[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            h, w = view.shape
            lo, hi = np.percentile(view[:: max(1, h // 128), :: max(1, w // 128)], (1, 99))
            tol = _FG_FRACTION * (hi - lo)
            # Margin twice (here and below): foreground_box ignored its margin argument and always added _MARGIN,
            # and every cached array depends on that output, so the double margin is kept on purpose.
            t, l, b, r = foreground_box(view, margin=_MARGIN)
            if b - t >= 0.97 * h and r - l >= 0.97 * w:
                # Foreground fills the image: either the head does, or a field touching the edges does.
                dy, dx = max(1, int(0.06 * h)), max(1, int(0.06 * w))
                inset = view[dy : h - dy, dx : w - dx]
                if _uniform_border(inset, tol) and abs(background_level(inset) - background_level(view)) > tol:
                    rows, cols = rows[dy : h - dy], cols[dx : w - dx]
                    continue
                break
            inner = view[t:b, l:r]
            if _uniform_border(inner, tol) and abs(background_level(inner) - background_level(view)) > tol:
                rows, cols = rows[t:b], cols[l:r]  # the box is a uniform field of another level, not a head
                continue
            m = round(_MARGIN * max(b - t, r - l))
            rows, cols = rows[max(0, t - m) : b + m], cols[max(0, l - m) : r + m]
            break
    box = (int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)
    h, w = len(rows), len(cols)
    side = max(h, w)
    fill = background_level(gray[box[0] : box[2], box[1] : box[3]])
    return SquareCrop(box, side, ((side - h) // 2, (side - w) // 2), fill)


def max_fraction_crop(gray: np.ndarray, fraction: float = 0.1) -> SquareCrop:
    """The simple recipes' crop (``crop: max_fraction``): the bounding box of the pixels above ``fraction`` of the
    image's maximum (the whole image when none is), centred in a square padded with 0."""
    ys, xs = np.nonzero(gray > fraction * gray.max()) if gray.size else ((), ())
    h, w = gray.shape
    t, l, b, r = (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1) if len(ys) else (0, 0, h, w)
    side = max(b - t, r - l)
    return SquareCrop((t, l, b, r), side, ((side - (b - t)) // 2, (side - (r - l)) // 2), 0.0)


def crop_pad_square(gray: np.ndarray, crop_foreground: bool = True) -> np.ndarray:
    """Foreground crop (optional) then centred pad to square with the background level. (H, W) -> (L, L)."""
    return square_crop(gray, crop_foreground).apply(gray)


def resize(gray: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a float (H, W) array to (size, size)."""
    if gray.shape == (size, size):
        return gray.astype(np.float32, copy=False)
    img = Image.fromarray(np.ascontiguousarray(gray, dtype=np.float32), mode="F")
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def rescale_uint8(x: np.ndarray, percentiles: tuple[float, float], where: np.ndarray | None = None) -> np.ndarray:
    """Clip to the given intensity percentiles (of the pixels ``where`` is True, default all) and rescale linearly to
    uint8 0..255 (zeros if flat)."""
    lo, hi = np.percentile(x if where is None or not where.any() else x[where], percentiles)
    if hi - lo <= 1e-6:
        return np.zeros(x.shape, np.uint8)
    y = (np.clip(x, lo, hi) - lo) * (255.0 / (hi - lo))
    return np.round(y).astype(np.uint8)


def raw_uint8(x: np.ndarray) -> np.ndarray:
    """8-bit grey levels kept as they are (``rescale: false``): rounded and clipped to 0..255."""
    return np.round(np.clip(x, 0, 255)).astype(np.uint8)


def preprocess_framed(img: Image.Image, cfg: PreprocessConfig) -> FramedImage:
    """The deterministic, class-independent preprocessing, with where its pixels came from.

    Args:
        img: a decoded PIL image in any mode.
        cfg: preprocessing settings (``img_size``, ``crop_foreground``, ``crop``, ``clip_percentiles``, ``rescale``,
            ``head_mask``).

    Returns:
        The uint8 (S, S) image (S = ``cfg.img_size``) and its :class:`Framing` (crop boxes and resize scale).
    """
    gray = to_gray(img)  # (H, W) float32
    if not cfg.rescale and gray.size and float(gray.max()) > 255:
        raise ValueError(
            f"data.preprocess.rescale=false keeps 8-bit grey levels, but this image reaches {float(gray.max()):.0f} "
            "(more than 8 bits); set data.preprocess.rescale=true"
        )
    if cfg.crop_foreground and cfg.crop == "max_fraction":
        first = max_fraction_crop(gray)
    else:
        first = square_crop(gray, cfg.crop_foreground)
    square = first.apply(gray)  # (L, L)
    if not cfg.head_mask:
        small = resize(square, cfg.img_size)
        image = rescale_uint8(small, cfg.clip_percentiles) if cfg.rescale else raw_uint8(small)  # (S, S) uint8
        return FramedImage(image, Framing((first,), cfg.img_size))
    head = _head_crop(square, cfg.img_size)  # crop tight to the head, resize, clip over the head, black outside it
    small = resize(head.apply(square), cfg.img_size)
    mask = head_mask(small, cfg.head_erode)
    image = rescale_uint8(small, cfg.clip_percentiles, where=mask) if cfg.rescale else raw_uint8(small)
    image[~mask] = 0
    return FramedImage(image, Framing((first, head), cfg.img_size))


def preprocess_image(img: Image.Image, cfg: PreprocessConfig) -> np.ndarray:
    """The uint8 (S, S) image of :func:`preprocess_framed`: what the decode-once cache stores."""
    return preprocess_framed(img, cfg).image


def draft_size(cfg: PreprocessConfig) -> tuple[int, int] | None:
    """JPEG draft bound: decode at >= 2x the model size so the crop still has enough resolution (None: full size,
    ``jpeg_draft: false``)."""
    return (2 * cfg.img_size, 2 * cfg.img_size) if cfg.jpeg_draft else None


def decode_for_model(data: bytes, path: Path | str, cfg: PreprocessConfig) -> Image.Image:
    """Decode a file's bytes as every model input is decoded (JPEGs at the DCT draft scale of :func:`draft_size`).

    The decode-once cache and ``popevit explain`` both call this, so an explanation sees the pixels that training
    and evaluation saw.
    """
    return decode_bytes(data, path, draft=draft_size(cfg))


def to_tensor(arr: np.ndarray, cfg: PreprocessConfig) -> torch.Tensor:
    """Cached uint8 (S, S) -> model input: float (C, S, S), normalised as ``cfg.normalize`` says, C =
    ``cfg.in_chans`` (the eval transform of :mod:`popevit.data.transforms`, one code path with evaluation)."""
    import torch

    from popevit.data.transforms import build_eval_transform

    x = torch.from_numpy(np.ascontiguousarray(arr)).float().div_(255.0).unsqueeze(0)  # (1, S, S)
    return build_eval_transform(cfg)(x)


def settings_key(cfg: PreprocessConfig) -> str:
    """Stable string of everything that changes the cached array (cache invalidation key)."""
    fields = {
        "v": PREPROCESS_VERSION,
        "img_size": cfg.img_size,
        "crop_foreground": cfg.crop_foreground,
        "clip_percentiles": list(cfg.clip_percentiles),
        "draft": draft_size(cfg),
    }
    if cfg.head_mask:  # only when on, so that the arrays cached before the option existed stay valid
        fields.update(head_mask=True, head_erode=cfg.head_erode)
    if cfg.crop != "head" or not cfg.rescale:  # likewise ("draft" is None without the JPEG draft)
        fields.update(crop=cfg.crop, rescale=cfg.rescale)
    return json.dumps(fields, sort_keys=True)
