"""The images an explanation is made of: decoded and preprocessed as in training, with lesion masks aligned.

The model input comes from :func:`popevit.data.preprocess.preprocess_framed`, which also returns where its pixels
came from (the crop boxes and the resize scale, :class:`popevit.data.preprocess.Framing`); a lesion mask drawn on
the original image (phantoms) is pushed through the same framing, so a heatmap and a mask share one geometry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from popevit.config import PreprocessConfig
from popevit.data.decode import decode_bytes, read_bytes, to_gray
from popevit.data.discover import classify_file
from popevit.data.phantoms import mask_path
from popevit.data.preprocess import decode_for_model, preprocess_framed


@dataclass
class Item:
    """One image to explain: its path, true class index (-1 when unknown), original and model-input pixels."""

    path: str
    label: int
    original: np.ndarray  # (H, W) float32 grayscale in native range
    pre: np.ndarray  # (S, S) uint8, what the model sees before standardisation
    mask: np.ndarray | None = None  # (S, S) bool lesion mask in model-input geometry
    extra: dict[str, Any] = field(default_factory=dict)


def _mask_array(mask: Image.Image | np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A mask as float32 0/1 of the image's ``shape``; a mask of another shape is refused."""
    m = (np.asarray(mask.convert("L") if isinstance(mask, Image.Image) else mask) > 0).astype(np.float32)
    if m.shape != shape:
        raise ValueError(f"mask shape {m.shape} differs from image shape {shape}; pass the image's own mask")
    return m


def preprocess_mask(img: Image.Image, mask: Image.Image | np.ndarray, cfg: PreprocessConfig) -> np.ndarray:
    """A lesion mask in the model input's geometry.

    Args:
        img: the decoded image the mask belongs to (its content decides the crop).
        mask: the (H, W) mask, nonzero inside the lesion.
        cfg: the run's preprocessing settings.

    Returns:
        bool (S, S) mask aligned with ``preprocess_image(img, cfg)``.
    """
    m = _mask_array(mask, to_gray(img).shape)
    return preprocess_framed(img, cfg).framing.apply(m, fill=0.0) >= 0.5


def load_item(path: str | Path, label: int, cfg: PreprocessConfig) -> Item:
    """Decode, preprocess and (for phantoms) attach the aligned lesion mask of one image.

    The model input is decoded as the training cache decodes it (:func:`popevit.data.preprocess.decode_for_model`:
    JPEGs at a DCT draft scale), so explanations see the pixels that training and evaluation saw. The original is
    shown at the file's own size; a mask drawn on it is resized (nearest) to the drafted image first.
    """
    data = read_bytes(Path(path))
    img = decode_for_model(data, path, cfg)
    full = decode_bytes(data, path) if img.format == "JPEG" else img  # only JPEGs are drafted
    framed = preprocess_framed(img, cfg)
    mask = None
    if (mp := mask_path(Path(path))) is not None:
        m = Image.open(mp)
        if m.size == full.size != img.size:
            m = m.convert("L").resize(img.size, Image.Resampling.NEAREST)
        mask = framed.framing.apply(_mask_array(m, (img.size[1], img.size[0])), fill=0.0) >= 0.5
    return Item(str(path), label, to_gray(full), framed.image, mask)


def image_labels(
    images: Sequence[str | Path], classes: list[str]
) -> tuple[list[str], np.ndarray, set[str], list[tuple[Path, str]]]:
    """Paths given one by one (files or folders); the label is the parent folder's name when it is a class.

    Returns:
        ``(paths, y, named, skipped)``: image paths, (n,) class indices into ``classes`` (-1 when the folder is not
        a class), the paths named one by one (a file among them that cannot be decoded is an error; one found in a
        folder is skipped), and the files in the folders that are not images, with the reason.
    """
    paths: list[str] = []
    named: set[str] = set()
    skipped: list[tuple[Path, str]] = []
    for p in map(Path, images):
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if not f.is_file() or "masks" in f.relative_to(p).parts:
                    continue
                reason = classify_file(f)
                if reason is None:
                    paths.append(str(f))
                else:
                    skipped.append((f, reason))
        elif p.is_file():
            paths.append(str(p))
            named.add(str(p))
        else:
            raise FileNotFoundError(f"image {str(p)!r} not found; pass existing files or folders to --images")
    if not paths:
        raise ValueError(f"no images found in {[str(i) for i in images]}")
    labels = [classes.index(Path(p).parent.name) if Path(p).parent.name in classes else -1 for p in paths]
    return paths, np.array(labels, dtype=np.int64), named, skipped
