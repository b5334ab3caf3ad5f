"""Data-loader throughput, cold and cached, through popevit's own data path (``popevit.data``).

- ``cold``: a fresh decode-once cache; :meth:`ImageDataset.prepare` reads, hashes, decodes, preprocesses and stores
  every image (what the first ``MRIDataModule.setup`` does on a new machine).
- ``warm_disk``: a new dataset over the filled cache: read + hash the file, load the stored array (every later run).
- ``cached``: epochs of a ``DataLoader`` (batch-level train augmentation, :class:`EpochShuffleSampler`) over arrays
  already in memory, which is what training sees from the second epoch on; the figure is the median epoch rate.

``benchmarks/bench_data.py`` times the same stages for BENCHMARKS.md; this module is the
library form used by ``popevit bench``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from popevit.bench.timing import load_average


def loader_throughput(
    data: Path,
    *,
    img_size: int = 128,
    batch_size: int = 32,
    workers: int = 0,
    prepare_workers: int | None = None,
    epochs: int = 3,
    limit: int | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """Images per second of the cold first pass, a warm-disk pass and cached (in-memory) epochs.

    Args:
        data: image folder (Kaggle layout: one sub-folder per class).
        img_size: preprocessed side in pixels.
        batch_size: loader batch.
        workers: ``DataLoader`` workers for the cached epochs (0 = main process, popevit's default).
        prepare_workers: processes of the cold pass (``None`` = ImageDataset's default: all cores for > 64 files).
        epochs: cached epochs timed (median reported).
        limit: use only the first ``limit`` files (sorted), for quick runs.
        cache_dir: where the fresh cache goes; default a temporary folder (removed afterwards).

    Returns:
        ``{"images", "cold_img_s", "warm_disk_img_s", "cached_img_s", "cached_epochs_img_s", "load_avg", ...}``.
    """
    from torch.utils.data import DataLoader

    from popevit.config import AugmentConfig, PreprocessConfig
    from popevit.data import discover
    from popevit.data.datamodule import EpochShuffleSampler
    from popevit.data.dataset import ImageDataset
    from popevit.data.transforms import build_train_transform

    samples = discover(Path(data)).samples
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        raise ValueError(f"no images found under {str(data)!r}; pass a folder with one sub-folder per class")
    classes = sorted({s.label for s in samples})
    paths = [s.path for s in samples]
    targets = [classes.index(s.label) for s in samples]
    pre = PreprocessConfig(img_size=img_size)
    out: dict[str, Any] = {
        "data": str(data),
        "images": len(paths),
        "img_size": img_size,
        "batch_size": batch_size,
        "workers": workers,
        "load_avg_before": load_average(),
    }
    with tempfile.TemporaryDirectory(prefix="popevit-bench-cache-") as tmp:
        root = Path(cache_dir) if cache_dir is not None else Path(tmp)
        cold = ImageDataset(paths, targets, pre, cache_dir=root)
        t0 = time.perf_counter()
        bad = cold.prepare(workers=prepare_workers)
        out["cold_img_s"] = len(paths) / (time.perf_counter() - t0)
        out["bad_files"] = len(bad)

        warm = ImageDataset(paths, targets, pre, cache_dir=root)
        t0 = time.perf_counter()
        warm.prepare(workers=1)
        out["warm_disk_img_s"] = len(paths) / (time.perf_counter() - t0)

        warm.transform = build_train_transform(AugmentConfig(), pre)
        sampler = EpochShuffleSampler(len(warm))
        loader = DataLoader(
            warm, batch_size=batch_size, sampler=sampler, num_workers=workers, persistent_workers=workers > 0
        )
        rates = []
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            t0 = time.perf_counter()
            n = sum(x.shape[0] for x, _ in loader)
            rates.append(n / (time.perf_counter() - t0))
    out["cached_epochs_img_s"] = rates
    out["cached_img_s"] = statistics.median(rates)
    out["load_avg_after"] = load_average()
    return out
