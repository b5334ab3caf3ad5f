"""Data-layer speed figures behind BENCHMARKS.md (the data-layer targets, on 2 CPU cores).

1. first pass over a folder: read + decode + preprocess + write the decode-once cache (target <= 60 s for 5712);
2. cached loading with augmentation at 128 px through a DataLoader (target >= 3000 images/s);
3. ``inspect`` with near-duplicate detection, cold fingerprint cache (target <= 90 s for 5712).

Usage: ``python benchmarks/bench_data.py [--data DIR] [--workers 2] [--json out.json]``. Without ``--data`` it uses
the Kaggle Training folder when present, else a 4 x 250 random-size phantom set. Every cache lives in a temporary
folder, so each run measures a cold first pass. Timings on shared machines vary; report the load alongside.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from popevit.config import AugmentConfig, PreprocessConfig
from popevit.data import discover
from popevit.data.datamodule import EpochShuffleSampler
from popevit.data.dataset import ImageDataset
from popevit.data.inspection import inspect_data
from popevit.data.transforms import build_train_transform

REAL = Path(__file__).resolve().parents[2] / "shared/data/brain-tumor-mri/Training"


def first_pass(paths: list[Path], cache: Path, size: int, workers: int) -> float:
    ds = ImageDataset(paths, [0] * len(paths), PreprocessConfig(img_size=size), cache_dir=cache)
    t = time.perf_counter()
    bad = ds.prepare(workers=workers)
    dt = time.perf_counter() - t
    print(f"first pass: {len(paths)} images in {dt:.1f} s ({len(paths) / dt:.0f} img/s), {len(bad)} bad")
    return dt


def cached_loading(paths: list[Path], cache: Path, size: int, workers: int, epochs: int = 2) -> list[float]:
    cfg = PreprocessConfig(img_size=size)
    ds = ImageDataset(paths, [0] * len(paths), cfg, transform=build_train_transform(AugmentConfig(), cfg),
                      cache_dir=cache)  # fmt: skip
    loader = DataLoader(ds, batch_size=64, sampler=EpochShuffleSampler(len(ds)), num_workers=workers,
                        persistent_workers=workers > 0)  # fmt: skip
    rates = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        t = time.perf_counter()
        n = sum(x.shape[0] for x, _ in loader)
        rates.append(n / (time.perf_counter() - t))
        print(f"cached loading + augmentation, {size} px, workers={workers}, epoch {epoch}: {rates[-1]:.0f} img/s")
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--skip-inspect", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp(prefix="popevit-bench-"))
    data = args.data or (REAL if REAL.is_dir() else None)
    if data is None:
        from popevit.data.phantoms import synthesize

        data = synthesize(tmp / "phantoms", per_class=250, size=None, seed=0)
    paths = [s.path for s in discover(data).samples]
    print(f"data: {data} ({len(paths)} images); cpus: {os.cpu_count()}; load avg: {os.getloadavg()}")
    out = {"data": str(data), "images": len(paths), "cpus": os.cpu_count(), "machine": platform.processor(),
           "load_before": os.getloadavg()}  # fmt: skip
    out["first_pass_s"] = first_pass(paths, tmp / "cache", args.size, args.workers)
    out["cached_img_per_s_workers0"] = cached_loading(paths, tmp / "cache", args.size, 0)
    out[f"cached_img_per_s_workers{args.workers}"] = cached_loading(paths, tmp / "cache", args.size, args.workers)
    if not args.skip_inspect:
        for label, cache in (("cold", tmp / "fp"), ("warm", tmp / "fp")):
            t = time.perf_counter()
            r = inspect_data(data, cache_dir=cache, workers=args.workers)
            out[f"inspect_{label}_s"] = time.perf_counter() - t
            print(f"inspect ({label} fingerprint cache): {out[f'inspect_{label}_s']:.1f} s, "
                  f"{r['exact_duplicate_groups']} exact groups, {r['near_duplicate_groups']} near groups")  # fmt: skip
    out["load_after"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
