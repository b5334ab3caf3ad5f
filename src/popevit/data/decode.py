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
        DecodeError: unknown format, truncated/corrupt data, or a decompression bomb.
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
    except DecodeError:
        raise
    except UnidentifiedImageError:
        head = data[:8].hex(" ")
        raise DecodeError(path, f"not a recognised image format (content starts with {head})") from None
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
