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
from popevit.data.dataset import ImageDataset, split_images
from popevit.data.manifest import EXCLUDED, Manifest, read_manifest
from popevit.data.transforms import build_eval_transform, build_train_transform

log = logging.getLogger(__name__)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator seeded by ``numpy.random.SeedSequence([seed, epoch])`` (see :class:`EpochShuffleSampler`)."""
    key = int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])
    return torch.Generator().manual_seed(key)


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
        return iter(torch.randperm(self.n, generator=epoch_generator(self.seed, self.epoch)).tolist())

    def __len__(self) -> int:
        return self.n


class SourceBalancedSampler(EpochShuffleSampler):
    """As many draws per epoch as there are images, with replacement, each source drawn equally often on average.

    For training on several sources at once (``popevit data split --add``): a small source is seen as often as a
    large one, so the model cannot ignore it (or learn the sources' sizes). Image ``i`` of a source with ``n_s``
    images is drawn with probability ``1 / (S * n_s)``; the order is a function of (seed, epoch) only, as in
    :class:`EpochShuffleSampler`.

    Args:
        sources: the source of every image of the dataset, in dataset order.
        seed: seed of the draws.
    """

    def __init__(self, sources: list[str], seed: int = 0) -> None:
        super().__init__(len(sources), seed)
        counts = {s: sources.count(s) for s in set(sources)}
        self.weights = torch.tensor([1.0 / counts[s] for s in sources], dtype=torch.float64)

    def __iter__(self) -> Iterator[int]:
        g = epoch_generator(self.seed, self.epoch)
        return iter(torch.multinomial(self.weights, self.n, replacement=True, generator=g).tolist())


def inverse_frequency_weights(targets: list[int], classes: list[str]) -> torch.Tensor:
    """Per-class loss weights 1/count normalised to mean 1, (K,) float; a class without images is an error.
    Partial labels (targets >= K, see :attr:`MRIDataModule.label_sets`) do not count."""
    full = [t for t in targets if t < len(classes)]
    counts = torch.bincount(torch.tensor(full, dtype=torch.long), minlength=len(classes)).float()
    if (counts == 0).any():
        empty = [c for c, n in zip(classes, counts.tolist(), strict=True) if n == 0]
        raise RuntimeError(f"classes {empty} have no training images; check the manifest or --classes")
    w = 1.0 / counts
    return w / w.mean()


def make_loader(ds: Dataset, cfg: DataConfig, seed: int, train: bool, sources: list[str] | None = None) -> DataLoader:
    """The DataLoader of every popevit DataModule: (seed, epoch)-keyed shuffling for training (source-balanced draws
    with ``cfg.sampling``, given each image's source), fixed order otherwise."""
    nw = cfg.num_workers
    sampler = None
    if train and cfg.sampling == "source_balanced":
        if not sources or len(set(sources)) < 2:
            raise ValueError(
                "data.sampling=source_balanced needs a manifest of several sources (popevit data split DATA --add "
                "NAME=FOLDER); this one has one source: use data.sampling=shuffle"
            )
        sampler = SourceBalancedSampler(sources, seed)
    elif train:
        sampler = EpochShuffleSampler(len(ds), seed)
    return DataLoader(
        ds,
        batch_size=cfg.batch_size,
        sampler=sampler,
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
        sources = getattr(self, "sources", {}).get(split)
        return make_loader(self.datasets[split], self.cfg, self.seed, train, sources)

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
        # partial labels (e.g. Br35H's "tumor" beside the tumour types) are targets k, k+1, ...: sets of classes
        self.label_sets: list[list[int]] = [[self.classes.index(c) for c in members]
                                            for members in self.manifest.label_sets.values()]  # fmt: skip
        self.targets = {c: i for i, c in enumerate([*self.classes, *self.manifest.label_sets])}
        self.sources: dict[str, list[str]] = {}
        self.datasets: dict[str, ImageDataset] = {}
        self.skipped: list[tuple[Path, str]] = [(r.path, r.note) for r in self.manifest.select(EXCLUDED)]

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        pre = self.cfg.preprocess
        # every split in one pass: at most one set of decoding processes, and none when the cache is warm
        ds, spans = split_images(self.manifest, pre, self.cfg.cache_dir, self.targets)
        bad = dict(ds.prepare(workers=None))
        source_of = {r.path: r.source for r in self.manifest.select(None)}
        for split, span in spans.items():
            for i in span:
                if ds.paths[i] in bad:  # the caller reports them (popevit.data.checks.format_skipped)
                    log.info("skipping %s (%s): %s", ds.paths[i], split, bad[ds.paths[i]])
                    self.skipped.append((ds.paths[i], bad[ds.paths[i]]))
            tf = build_train_transform(self.cfg.augment, pre) if split == "train" else build_eval_transform(pre)
            self.datasets[split] = ds.subset([i for i in span if ds.paths[i] not in bad], transform=tf)
            self.sources[split] = [source_of[p] for p in self.datasets[split].paths]
        if len(self.datasets["train"]) == 0:
            raise ValueError(f"manifest {self.manifest.path} has no usable training images (none of them decodes)")
