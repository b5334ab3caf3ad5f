"""Robust image decoding: format from content (magic bytes), not extension; every failure becomes a reason.

Real collections mix grayscale, RGB, RGBA, palette and 16-bit images, PNG files named ``.jpg``, truncated or
zero-byte files, unreadable permissions and, at worst, decompression bombs (tiny files declaring gigapixel images).
:func:`load_image` turns each of these into a :class:`DecodeError` with a one-line reason, so callers can list the
file and skip it before training starts instead of crashing an epoch.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Extensions treated as image candidates during discovery (a file with image magic bytes is one too).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".pgm", ".ppm", ".pnm", ".jfif"}
)
EXTENSION_FORMAT = {
    ".jpg": "JPEG", ".jpeg": "JPEG", ".jfif": "JPEG", ".png": "PNG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
    ".gif": "GIF", ".webp": "WEBP", ".pgm": "PPM", ".ppm": "PPM", ".pnm": "PPM",
}  # fmt: skip
# Pixel limit: larger images are refused as decompression bombs (PIL's own default warns at ~89 MP).
MAX_PIXELS = 64_000_000
# Smaller sides hold no anatomy (a 1x1 image became an all-zero training image before this check).
MIN_SIDE = 8


class DecodeError(Exception):
    """A file that cannot be used as an image; ``reason`` says why in one line."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def sniff_format(head: bytes) -> str | None:
    """Image format from the first bytes of a file (PIL format names), or ``None`` when not an image."""
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if len(head) >= 2 and head[0:1] == b"P" and head[1:2] in b"123456":
        return "PPM"
    return None


def looks_like(head: bytes) -> str | None:
    """What a file that is not an image seems to be, from its first bytes (>= 352 for NIfTI): ``DICOM``, ``NIfTI``,
    ``HTML``, ``PDF``, ``JPEG 2000``, ``gzip``, ``zip``, ``text``; None when it is none of these."""
    if head[128:132] == b"DICM":
        return "DICOM"
    if head[344:348] in (b"n+1\x00", b"ni1\x00") or head[344:348] in (b"n+2\x00", b"ni2\x00"):
        return "NIfTI"
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return "JPEG 2000"
    if head.startswith(b"%PDF"):
        return "PDF"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<?xml")):
        return "HTML" if b"html" in text[:64] else "XML"
    try:
        head[:512].decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < min(len(head), 512) - 3:  # not just a character cut at the end of the sample
            return None
    return "text" if head and all(b >= 32 or b in b"\t\r\n" for b in head[:512]) else None


_LOOKS_LIKE_FIX = {
    "DICOM": "popevit trains on 2-D image files: convert it to PNG, or read it with `popevit predict`",
    "NIfTI": "popevit trains on 2-D image files: export its slices to PNG, or read it with `popevit predict`",
    "HTML": "probably a web page saved under an image's name: download the image itself",
    "text": "probably saved under the wrong name; replace it with the image",
}


def not_image_reason(head: bytes) -> str:
    """``not an image: looks like ...`` with the fix, or the first bytes when the content is unknown."""
    kind = looks_like(head)
    if kind is None:
        return f"not a recognised image format (content starts with {head[:8].hex(' ')})"
    fix = _LOOKS_LIKE_FIX.get(kind, "replace it with the image, or move it out of the data folder")
    return f"not an image: looks like {kind} ({fix})"


def check_degenerate(img: Image.Image, path: Path | str = "<bytes>") -> None:
    """Refuse images that decode but hold nothing to learn from: tiny, non-finite (float TIFF) or constant.

    Raises:
        DecodeError: with the reason (``degenerate: ...``).
    """
    w, h = img.size
    if min(w, h) < MIN_SIDE:
        raise DecodeError(path, f"degenerate: {w}x{h} px, too small to hold an image (needs >= {MIN_SIDE} px a side)")
    if img.mode == "F":
        arr = np.asarray(img)
        if not np.isfinite(arr).all():
            bad = int((~np.isfinite(arr)).sum())
            raise DecodeError(
                path, f"degenerate: {bad} of {arr.size} pixels are NaN or infinite (a damaged float image)"
            )
    extrema = img.getextrema()
    bands = extrema if isinstance(extrema[0], tuple) else (extrema,)
    if img.mode in ("RGBA", "LA", "PA"):
        bands = bands[:-1]  # colour bands only: a constant picture under a varying alpha still shows nothing
    if all(lo == hi for lo, hi in bands):
        value = bands[0][0] if len(bands) == 1 else tuple(b[0] for b in bands)
        raise DecodeError(path, f"degenerate: every pixel has the value {value} (a blank image)")


def extension_format(path: Path) -> str | None:
    """The format a file's extension claims (``None`` for unknown extensions)."""
    return EXTENSION_FORMAT.get(Path(path).suffix.lower())


def read_bytes(path: Path) -> bytes:
    """Read a whole file, mapping OS failures to :class:`DecodeError`."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except PermissionError:
        raise DecodeError(path, "unreadable: permission denied (check the file's permissions)") from None
    except FileNotFoundError:
        raise DecodeError(path, "missing: file not found (moved or deleted since it was listed?)") from None
    except IsADirectoryError:
        raise DecodeError(path, "is a directory, not an image file") from None
    except OSError as err:
        raise DecodeError(path, f"unreadable: {err.strerror or err}") from None
    if not data:
        raise DecodeError(path, "empty file (0 bytes)")
    return data


def decode_bytes(data: bytes, path: Path | str = "<bytes>", *, draft: tuple[int, int] | None = None) -> Image.Image:
    """Decode image bytes into a fully loaded, EXIF-oriented PIL image in its original mode.

    Args:
        data: the file's bytes.
        path: used in error messages only.
        draft: optional ``(w, h)`` lower bound for JPEG DCT-domain downscaling (fast decode of large JPEGs).

    Returns:
        The decoded image (modes L, RGB, RGBA, P, I;16, ... as stored).

    Raises:
        DecodeError: unknown format (saying what the file looks like: HTML, text, DICOM...), truncated/corrupt data,
            a decompression bomb, or a degenerate image (:func:`check_degenerate`).
    """
    if not data:
        raise DecodeError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise DecodeError(path, f"decompression bomb: declares {w}x{h} = {w * h} pixels (> {MAX_PIXELS})")
            if w < 1 or h < 1:
                raise DecodeError(path, f"invalid size {w}x{h}")
            if draft is not None and img.format == "JPEG":
                img.draft(img.mode, draft)
            img.load()
            ImageOps.exif_transpose(img, in_place=True)
            check_degenerate(img, path)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError(path, not_image_reason(data[:512])) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DecodeError(path, f"decompression bomb: {err}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise DecodeError(path, f"truncated or corrupt image data ({type(err).__name__}: {err})") from None
    return img


def load_image(path: Path | str, *, draft: tuple[int, int] | None = None) -> Image.Image:
    """Read and decode one image file; format detected from content, EXIF orientation applied.

    Args:
        path: the image file.
        draft: optional JPEG draft size, see :func:`decode_bytes`.

    Returns:
        The decoded PIL image in its stored mode.

    Raises:
        DecodeError: with a one-line reason (permission denied, empty, truncated, corrupt, bomb, not an image).
    """
    return decode_bytes(read_bytes(Path(path)), path, draft=draft)


def to_gray(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> float32 (H, W) grayscale in the image's native range (alpha composited over black).

    RGB(A) uses ITU-R BT.601 luma weights; palette images go through their palette; 16/32-bit integer and float
    images keep their values (intensity scaling happens later by percentile clipping).
    """
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return np.asarray(img, dtype=np.float32)
    if mode == "P":
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA"):
        arr = np.asarray(img.convert("RGBA"), dtype=np.float32)
        alpha = arr[..., 3:4] / 255.0
        rgb = arr[..., :3] * alpha
        return rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    if mode == "L":
        return np.asarray(img, dtype=np.float32)
    return np.asarray(img.convert("L"), dtype=np.float32)
