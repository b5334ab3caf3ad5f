"""Map-style dataset over image files: decode-once cache -> uint8 (S, S) -> transform -> (x, y)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from popevit.config import PreprocessConfig
from popevit.data.cache import ArrayCache, CacheWriteError, default_cache_dir
from popevit.data.decode import DecodeError
from popevit.data.manifest_file import SPLITS, Manifest
from popevit.data.transforms import build_eval_transform
from popevit.progress import track


def _warm(args: tuple[str, str | None, Path, PreprocessConfig]) -> tuple[str, str | None, str | None]:
    """Worker: make sure one file is cached; returns (path, content hash or None, error or None)."""
    path, expected, root, cfg = args
    try:
        _, digest = ArrayCache(root, cfg).load(Path(path), expected)
        return path, digest, None
    except DecodeError as err:
        return path, None, err.reason
    except CacheWriteError:
        raise  # the machine's problem, not the file's: dropping the image would lose it silently
    except Exception as err:  # a hostile file must never take the run down
        return path, None, f"preprocessing failed ({type(err).__name__}: {err})"


class ImageDataset(Dataset):
    """Images and integer targets; items are ``(x, y)``, x float (C, S, S), y int.

    Arrays come from the decode-once cache (decoded and stored on first use) and are kept in memory after the
    first access, so later epochs touch neither the disk nor the decoder. Deterministic when ``transform`` is None
    (then x = the cached image through the eval transform of ``preprocess``).

    Args:
        paths: image files.
        targets: class indices, one per path.
        preprocess: preprocessing settings (image size, channels, crop, percentiles).
        transform: optional transform from :mod:`popevit.data.transforms`, applied to the [0, 1] (1, S, S) image.
        cache_dir: cache root; default :func:`popevit.data.cache.default_cache_dir`.
        content_hashes: optional content hashes from a manifest (a changed file is then an error, not stale data).
    """

    def __init__(
        self,
        paths: Sequence[Path],
        targets: list[int],
        preprocess: PreprocessConfig,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        cache_dir: Path | None = None,
        content_hashes: Sequence[str] | None = None,
    ) -> None:
        if len(paths) != len(targets):
            raise ValueError(f"got {len(paths)} paths but {len(targets)} targets; they must pair up")
        if content_hashes is not None and len(content_hashes) != len(paths):
            raise ValueError(f"got {len(content_hashes)} content hashes for {len(paths)} paths")
        self.paths = [Path(p) for p in paths]
        self.targets = list(targets)
        self.cfg = preprocess
        self.transform = transform if transform is not None else build_eval_transform(preprocess)
        self.cache_root = default_cache_dir(cache_dir)
        self.expected = list(content_hashes) if content_hashes is not None else [None] * len(self.paths)
        self._cache: ArrayCache | None = None
        self._arrays: list[np.ndarray | None] = [None] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def cache(self) -> ArrayCache:
        if self._cache is None:
            self._cache = ArrayCache(self.cache_root, self.cfg)
        return self._cache

    def array(self, i: int) -> np.ndarray:
        """The preprocessed uint8 (S, S) image ``i`` (raises :class:`DecodeError` for a bad file)."""
        arr = self._arrays[i]
        if arr is None:
            arr, _ = self.cache.load(self.paths[i], self.expected[i])
            self._arrays[i] = arr
        return arr

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.array(i)).unsqueeze(0).float().div_(255.0)  # (1, S, S) in [0, 1]
        return self.transform(x), self.targets[i]  # (C, S, S)

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        """Batched fetch (used by DataLoader): one stacked transform call for batch-aware transforms."""
        if self.transform is not None and not getattr(self.transform, "batched", False):
            return [self[i] for i in indices]
        x = torch.from_numpy(np.stack([self.array(i) for i in indices])).unsqueeze(1).float().div_(255.0)
        x = self.transform(x)  # (B, 1, S, S) in [0, 1] -> (B, C, S, S)
        return [(x[k], self.targets[i]) for k, i in enumerate(indices)]

    def prepare(self, workers: int | None = None) -> list[tuple[Path, str]]:
        """Build the cache for every file (in parallel when many are missing) and load all arrays into memory.

        A file counts as missing when its content hash is unknown or has no stored array. Only those go to the
        worker processes: a warm cache is read in this process, since starting workers (each importing torch) takes
        longer than reading a few thousand small arrays.

        Args:
            workers: processes for cache misses; default: all cores when > 64 misses.

        Returns:
            ``(path, reason)`` for every file that cannot be used; the caller decides what to drop.

        Raises:
            popevit.data.cache.CacheWriteError: the cache cannot be written; no image is dropped for that.
        """
        bad: list[tuple[Path, str]] = []
        todo = [i for i, a in enumerate(self._arrays) if a is None]
        misses = [i for i in todo if not self.cache.has(self.expected[i])]
        if workers is None:
            workers = (os.cpu_count() or 1) if len(misses) > 64 else 1
        what = f"decoding {len(misses)} of {len(todo)} images" if misses else f"loading {len(todo)} cached images"
        if workers > 1 and misses:
            jobs = [(str(self.paths[i]), self.expected[i], self.cache_root, self.cfg) for i in misses]
            with ProcessPoolExecutor(max_workers=workers) as pool:
                results = list(track(pool.map(_warm, jobs, chunksize=16), what, total=len(jobs)))
            failed = {p: err for p, _, err in results if err is not None}
            what = f"loading {len(todo)} decoded images"
        else:
            failed = {}
        for i in track(todo, what):
            reason = failed.get(str(self.paths[i]))
            if reason is None:
                try:
                    self.array(i)
                except DecodeError as err:
                    reason = err.reason
                except CacheWriteError:
                    raise
                except Exception as err:
                    reason = f"preprocessing failed ({type(err).__name__}: {err})"
            if reason is not None:
                bad.append((self.paths[i], reason))
        return bad

    def subset(self, keep: Sequence[int], transform: Callable[[torch.Tensor], torch.Tensor] | None = None
               ) -> ImageDataset:  # fmt: skip
        """A new dataset with only the items ``keep`` (arrays already loaded are shared), and ``transform`` instead
        of this one's when given."""
        tf = self.transform if transform is None else transform
        out = ImageDataset([self.paths[i] for i in keep], [self.targets[i] for i in keep], self.cfg, tf,
                           self.cache_root, [self.expected[i] for i in keep])  # fmt: skip
        out._arrays = [self._arrays[i] for i in keep]
        return out


def split_images(
    manifest: Manifest,
    preprocess: PreprocessConfig,
    cache_dir: Path | None = None,
    target_of: dict[str, int] | None = None,
) -> tuple[ImageDataset, dict[str, range]]:
    """The images of the train, val and test splits of ``manifest`` as one dataset, in that order, and each split's
    index range in it: what a run decodes, so that its DataModule and the warm-up of runs side by side
    (:func:`popevit.training.side_by_side.decode_once`) read the same files.

    Args:
        manifest: the run's manifest.
        preprocess: preprocessing settings (they select the cache folder).
        cache_dir: decode-once cache root (default :func:`~popevit.data.cache.default_cache_dir`).
        target_of: label -> target index; without it every target is 0 (decoding only).
    """
    rows, spans = [], {}
    for split in SPLITS:
        part = manifest.select(split)
        spans[split] = range(len(rows), len(rows) + len(part))
        rows += part
    targets = [target_of[r.label] for r in rows] if target_of is not None else [0] * len(rows)
    dataset = ImageDataset([r.path for r in rows], targets, preprocess, None, cache_dir, [r.content_hash for r in rows])
    return dataset, spans
