"""Fixtures for data-layer tests: a messy copy of the phantom set with planted duplicates and every bad-file kind."""

from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def png_bomb(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A tiny, valid-header PNG that declares a 10-gigapixel image (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))  # fmt: skip
    return path


def near_copy(src: Path, dst: Path, size: int = 80, gain: float = 0.85) -> Path:
    """The same slice resized and with lowered contrast, saved as JPEG: a near duplicate."""
    img = Image.open(src).convert("L").resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, np.float32) * gain + 10
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(dst, quality=92)
    return dst


@pytest.fixture
def messy_root(phantom_root: Path, tmp_path: Path) -> Path:
    """Phantoms (4 x 12 at 64 px) plus: 2 exact copies, 2 near copies (one across classes), a PNG named .jpg,
    zero-byte, truncated, corrupt and bomb files, and non-image clutter (.DS_Store, Thumbs.db, labels.txt)."""
    root = tmp_path / "messy"
    shutil.copytree(phantom_root, root)
    g = root / "glioma"
    shutil.copy(g / "glioma_0000.png", g / "copy_of_0000.png")  # exact, same class
    shutil.copy(root / "meningioma" / "meningioma_0001.png", root / "meningioma" / "dup_0001.png")
    near_copy(g / "glioma_0002.png", g / "glioma_0002_small.jpg")  # near, same class
    near_copy(root / "notumor" / "notumor_0003.png", root / "pituitary" / "conflict_0003.jpg")  # near, across
    Image.open(root / "notumor" / "notumor_0004.png").save(root / "notumor" / "png_named.jpg", format="PNG")
    (root / "notumor" / "empty.jpg").write_bytes(b"")
    jpg = (root / "notumor" / "notumor_0005.png").read_bytes()
    Image.open(root / "notumor" / "notumor_0005.png").convert("L").save(root / "notumor" / "full.jpg")
    full = (root / "notumor" / "full.jpg").read_bytes()
    (root / "notumor" / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (root / "notumor" / "full.jpg").unlink()
    (root / "pituitary" / "corrupt.png").write_bytes(b"this is not an image" + jpg[:10])
    png_bomb(root / "pituitary" / "bomb.png")
    (root / "glioma" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (root / "glioma" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (root / "meningioma" / "labels.txt").write_text("meningioma\n")
    return root
