"""Lightning DataModule: manifest -> decode-once cache -> transforms -> loaders, class weights from train."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from popevit.config import DataConfig
from popevit.data.dataset import ImageDataset
from popevit.data.manifest import EXCLUDED, SPLITS, Manifest, read_manifest
from popevit.data.transforms import build_eval_transform, build_train_transform

log = logging.getLogger(__name__)


class EpochShuffleSampler(Sampler[int]):
    """Random order drawn from a generator seeded by ``numpy.random.SeedSequence([seed, epoch])``.

    Lightning calls ``set_epoch`` before every epoch, so the order of epoch e is a function of (seed, e) only:
    reproducible, and identical after resuming from a checkpoint at epoch e. Hashing the pair (rather than seeding
    with ``seed + epoch``) keeps runs of neighbouring seeds from replaying each other's epochs one epoch apart.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        if seed < 0:
            raise ValueError(f"shuffle seed must be >= 0 (numpy SeedSequence), got {seed}; pass a non-negative seed")
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        key = int(np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0])
        g = torch.Generator().manual_seed(key)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def inverse_frequency_weights(targets: list[int], classes: list[str]) -> torch.Tensor:
    """Per-class loss weights 1/count normalised to mean 1, (K,) float; a class without images is an error."""
    counts = torch.bincount(torch.tensor(targets), minlength=len(classes)).float()
    if (counts == 0).any():
        empty = [c for c, n in zip(classes, counts.tolist(), strict=True) if n == 0]
        raise RuntimeError(f"classes {empty} have no training images; check the manifest or --classes")
    w = 1.0 / counts
    return w / w.mean()


def make_loader(ds: Dataset, cfg: DataConfig, seed: int, train: bool) -> DataLoader:
    """The DataLoader of every popevit DataModule: (seed, epoch)-keyed shuffling for training, fixed order otherwise."""
    nw = cfg.num_workers
    return DataLoader(
        ds,
        batch_size=cfg.batch_size,
        sampler=EpochShuffleSampler(len(ds), seed) if train else None,
        shuffle=False,
        num_workers=nw,
        persistent_workers=nw > 0,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed),
        drop_last=False,
    )


class SplitDataModule(L.LightningDataModule):
    """Loaders and class weights shared by every popevit DataModule.

    Subclasses fill ``self.datasets`` (``train``/``val``/``test``), ``self.classes``, ``self.cfg`` (DataConfig) and
    ``self.seed`` in ``setup()``.
    """

    datasets: dict[str, Dataset]
    classes: list[str]
    cfg: DataConfig
    seed: int

    @property
    def class_weights(self) -> torch.Tensor:
        """Inverse class frequency in the training split, normalised to mean 1. (K,) float."""
        self.setup()
        return inverse_frequency_weights(self.datasets["train"].targets, self.classes)

    def _loader(self, split: str, train: bool) -> DataLoader:
        return make_loader(self.datasets[split], self.cfg, self.seed, train)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)


class MRIDataModule(SplitDataModule):
    """Loaders for the ``train``/``val``/``test`` splits of a manifest.

    ``setup()`` reads every file once (building the decode-once cache), lists bad files with their reasons in
    ``self.skipped`` (and the log) and drops them before training starts, so no epoch can crash on a file.

    Args:
        cfg: data settings (batch size, workers, cache, preprocessing, augmentation).
        manifest: manifest CSV from ``popevit data split`` (or one already read).
        seed: seed of the training order and of worker RNGs.
    """

    def __init__(self, cfg: DataConfig, manifest: Path | Manifest, seed: int = 0) -> None:
        super().__init__()
        self.cfg = cfg
        self.seed = seed
        self.manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
        self.classes: list[str] = list(self.manifest.classes)
        self.datasets: dict[str, ImageDataset] = {}
        self.skipped: list[tuple[Path, str]] = [(r.path, r.note) for r in self.manifest.select(EXCLUDED)]

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        index = {c: i for i, c in enumerate(self.classes)}
        pre = self.cfg.preprocess
        for split in SPLITS:
            rows = self.manifest.select(split)
            tf = build_train_transform(self.cfg.augment, pre) if split == "train" else build_eval_transform(pre)
            ds = ImageDataset([r.path for r in rows], [index[r.label] for r in rows], pre, tf, self.cfg.cache_dir,
                              [r.content_hash for r in rows])  # fmt: skip
            bad = ds.prepare(workers=None)
            if bad:
                for p, reason in bad:  # the caller reports them (popevit.data.checks.format_skipped)
                    log.info("skipping %s (%s): %s", p, split, reason)
                bad_set = {p for p, _ in bad}
                ds = ds.subset([i for i, p in enumerate(ds.paths) if p not in bad_set])
                self.skipped.extend(bad)
            self.datasets[split] = ds
        if len(self.datasets["train"]) == 0:
            raise ValueError(f"manifest {self.manifest.path} has no usable training images (none of them decodes)")
