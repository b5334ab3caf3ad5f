"""The bad-input corpus, made at test time: broken image files, folder layouts, manifests, configs and run folders.

Nothing here is committed as binary data: every file is generated from a seed in a test's temporary folder. Each
generator returns what it made so that a test can name it in the expected message. :func:`snapshot` hashes every file
under a folder (symbolic links, FIFOs and sockets by kind only, never opened), so a test can prove that a command
changed no user file and left no half-made output.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import socket
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("glioma", "meningioma", "notumor", "pituitary")


# ---------------------------------------------------------------------------------------------------- image bytes


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def noise_image(seed: int, size: int = 32) -> np.ndarray:
    """A uint8 (size, size) image that every check accepts (not blank, not tiny)."""
    return np.random.default_rng(seed).integers(0, 256, size=(size, size), dtype=np.uint8)


def tiff_float(values: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(values.astype(np.float32), mode="F").save(buf, format="TIFF")
    return buf.getvalue()


def png_bomb() -> bytes:
    """A valid PNG header declaring a 100000 x 100000 image (a decompression bomb) in a few dozen bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    )


def dicom_bytes() -> bytes:
    """The start of a DICOM Part 10 file: a 128-byte preamble, ``DICM``, then a group-2 element."""
    return b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x14\x001.2.840.10008.1.2.1\x00" + b"\x00" * 64


def nifti_bytes() -> bytes:
    """A NIfTI-1 single-file header (348 bytes, ``n+1`` magic at 344) followed by a few voxels."""
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, 4, 4, 2, 1, 1, 1, 1)  # dim
    header[344:348] = b"n+1\x00"
    return bytes(header) + bytes(range(32))


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("scan.png", png_bytes(noise_image(1)))
    return buf.getvalue()


# name: (file name, content, words the reason must contain). Every one is a file that cannot be a training image.
BAD_IMAGES: dict[str, tuple[str, Callable[[], bytes], str]] = {
    "zero_bytes": ("zero.jpg", lambda: b"", "empty file"),
    "truncated_png": ("cut.png", lambda: png_bytes(noise_image(2))[:80], "truncated or corrupt"),
    "truncated_jpeg": ("cut.jpg", lambda: jpeg_bytes(noise_image(3))[:200], "truncated or corrupt"),
    "html_named_jpg": (
        "page.jpg",
        lambda: b"<!DOCTYPE html>\n<html><body>Not found</body></html>\n",
        "looks like HTML",
    ),
    "text_named_jpg": ("notes.jpg", lambda: b"patient 12, slice 3\nT1 post contrast\n", "looks like text"),
    "dicom_named_jpg": ("scan.jpg", dicom_bytes, "DICOM"),
    "nifti_named_png": ("volume.png", nifti_bytes, "NIfTI"),
    "pdf_named_jpg": ("report.jpg", lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "looks like PDF"),
    "zip_named_png": ("archive.png", zip_bytes, "looks like zip"),
    "one_pixel": ("dot.png", lambda: png_bytes(np.full((1, 1), 200, np.uint8)), "too small"),
    "four_pixels": ("speck.png", lambda: png_bytes(noise_image(4, size=4)), "too small"),
    "blank": ("blank.png", lambda: png_bytes(np.full((48, 48), 37, np.uint8)), "blank image"),
    "nan_tiff": ("nan.tif", lambda: tiff_float(np.full((24, 24), np.nan)), "NaN or infinite"),
    "inf_tiff": ("inf.tif", lambda: tiff_float(np.where(noise_image(5, 24) > 128, np.inf, 1.0)), "NaN or infinite"),
    "bomb": ("bomb.png", png_bomb, "decompression bomb"),
    "random_bytes": (
        "noise.jpg",
        lambda: bytes(np.random.default_rng(6).integers(0, 32, 400).astype(np.uint8)),
        "not a recognised image",
    ),
    "jpeg_header_only": ("header.jpg", lambda: b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "truncated or corrupt"),
}


# ---------------------------------------------------------------------------------------------------- folders


def phantom_folder(dest: Path, per_class: int = 10, size: int = 32, seed: int = 0) -> Path:
    """A small labelled folder ``dest/<class>/*.png`` of seeded phantoms (no masks, no metadata: only images)."""
    from popevit.data.phantoms import synthesize

    tmp = dest.with_name(dest.name + ".synth")
    synthesize(tmp, per_class=per_class, size=size, seed=seed)
    dest.mkdir(parents=True, exist_ok=True)
    for c in CLASSES:
        shutil.copytree(tmp / c, dest / c)
    shutil.rmtree(tmp)
    return dest


def non_utf8_name(folder: Path, data: bytes) -> Path:
    """A file whose name is not valid UTF-8 (bytes 0xff 0xfe), holding ``data``; returned as Python sees it."""
    raw = os.fsencode(folder) + b"/scan_\xff\xfe.png"
    with open(raw, "wb") as f:
        f.write(data)
    return Path(os.fsdecode(raw))


def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def make_socket(path: Path) -> Path:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # the socket file stays
    return path


# ---------------------------------------------------------------------------------------------------- snapshots


def snapshot(*roots: Path) -> dict[str, str]:
    """Path -> sha256 (regular files), or the kind of a link, FIFO, socket or folder, for everything under ``roots``."""
    out: dict[str, str] = {}
    for root in roots:
        if not os.path.lexists(root):
            continue
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames:
                p = os.path.join(dirpath, name)
                out[p] = "link" if os.path.islink(p) else "dir"
            for name in filenames:
                p = os.path.join(dirpath, name)
                mode = os.lstat(p).st_mode
                if stat.S_ISREG(mode):
                    with open(p, "rb") as f:
                        out[p] = hashlib.sha256(f.read()).hexdigest()
                else:
                    out[p] = "link" if stat.S_ISLNK(mode) else "special"
    return out


def flip_bytes(path: Path, count: int = 64, seed: int = 0) -> None:
    """Flip ``count`` bytes in the second half of a file (the tensor data of a safetensors file)."""
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(seed)
    for i in rng.choice(np.arange(len(data) // 2, len(data)), size=count, replace=False):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
