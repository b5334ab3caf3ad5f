"""Decode-once cache: preprocessed uint8 arrays keyed by content hash and preprocessing settings.

Layout: ``<cache>/preprocessed/<settings id>/<hash[:2]>/<hash>.npy`` where ``settings id`` is a digest of
:func:`popevit.data.preprocess.settings_key` (image size, crop, percentiles, algorithm version), stored readable in
``settings.json`` next to the arrays. Changing any setting selects a new folder, so stale arrays are never read.
Writes go to a per-process temporary file renamed over the target (``os.replace`` is atomic on POSIX and Windows),
so two processes filling the cache at once never expose a partial file; both write the same bytes. A write that
fails (disk full, read-only folder) raises :class:`CacheWriteError`: a problem of the machine, never of the image.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import numpy as np

from popevit.config import PreprocessConfig
from popevit.data.decode import DecodeError, read_bytes
from popevit.data.dedup import content_hash
from popevit.data.preprocess import decode_for_model, preprocess_image, settings_key


class CacheWriteError(OSError):
    """The decode-once cache could not be written (disk full, permissions): the image itself is fine."""


def default_cache_dir(configured: Path | None = None) -> Path:
    """``configured`` if set, else ``$POPEVIT_CACHE``, else ``~/.cache/popevit``."""
    if configured is not None:
        return Path(configured).expanduser()
    env = os.environ.get("POPEVIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "popevit"


class ArrayCache:
    """Preprocessed arrays for one preprocessing setting.

    Args:
        root: cache root (see :func:`default_cache_dir`).
        cfg: preprocessing settings; they select the sub-folder.
    """

    def __init__(self, root: Path, cfg: PreprocessConfig) -> None:
        key = settings_key(cfg)
        self.cfg = cfg
        self.dir = Path(root) / "preprocessed" / hashlib.sha256(key.encode()).hexdigest()[:16]
        settings = self.dir / "settings.json"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if not settings.exists():
                self._atomic_write(settings, key.encode())
        except OSError as err:
            raise self._write_error(err) from err

    def _write_error(self, err: OSError) -> CacheWriteError:
        return CacheWriteError(
            f"cannot write the decode-once cache in {str(self.dir)!r} ({err.strerror or err}); free disk space or fix "
            "the folder's permissions, or point data.cache_dir / $POPEVIT_CACHE at a writable folder"
        )

    def _file(self, digest: str) -> Path:
        return self.dir / digest[:2] / f"{digest}.npy"

    def _atomic_write(self, target: Path, payload: bytes) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def has(self, digest: str | None) -> bool:
        """Whether an array is stored for content hash ``digest`` (``None``, an unknown hash: no)."""
        return digest is not None and self._file(digest).is_file()

    def get(self, digest: str) -> np.ndarray | None:
        """The cached (S, S) uint8 array, or ``None`` when absent or unreadable (it is then rebuilt)."""
        f = self._file(digest)
        try:
            arr = np.load(f, allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return None
        s = self.cfg.img_size
        return arr if arr.shape == (s, s) and arr.dtype == np.uint8 else None

    def put(self, digest: str, arr: np.ndarray) -> None:
        """Store an array atomically."""
        f = self._file(digest)
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.ascontiguousarray(arr, dtype=np.uint8), allow_pickle=False)
        self._atomic_write(f, buf.getvalue())

    def load(self, path: Path, expected_hash: str | None = None) -> tuple[np.ndarray, str]:
        """Read a file, return its cached array (decoding and storing it on a miss) and its content hash.

        Args:
            path: image file.
            expected_hash: the content hash a manifest recorded; a mismatch raises, since the file changed.

        Raises:
            popevit.data.decode.DecodeError: unreadable file, or content changed since the manifest.
            CacheWriteError: the array could not be stored (disk full, permissions).
        """
        data = read_bytes(path)
        digest = content_hash(data)
        if expected_hash and digest != expected_hash:
            raise DecodeError(
                path, "content changed since the manifest was written (re-run `popevit data split` to update it)"
            )
        arr = self.get(digest)
        if arr is None or not arr.any():  # all zeros: a degenerate image cached before the decoder refused them
            arr = preprocess_image(decode_for_model(data, path, self.cfg), self.cfg)
            try:
                self.put(digest, arr)
            except OSError as err:
                raise self._write_error(err) from err
        return arr, digest
