"""CIFAR path offline: synthetic files in CIFAR's pickled on-disk format, read by torchvision."""

from __future__ import annotations

import math
import time

import lightning as L
import numpy as np
import pytest
import torch

from popevit.config import DataConfig, load_config
from popevit.data.cifar import CIFARDataModule, channel_stats, load_cifar, write_synthetic_cifar


def _cfg(root, **data) -> DataConfig:
    base = {"data": str(root), "batch_size": 16, "preprocess": {"img_size": 32, "in_chans": 3}}
    return DataConfig.model_validate({**base, **data})


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_torchvision_reads_the_synthetic_files_and_splits_are_stratified_and_disjoint(tmp_path, name):
    n_train = 200 if name == "cifar10" else 1000
    write_synthetic_cifar(tmp_path, name, n_train=n_train, n_test=30, seed=1)
    raw = load_cifar(name, tmp_path, train=True, download=False)
    assert raw.data.shape == (n_train, 32, 32, 3) and raw.data.dtype == np.uint8
    dm = CIFARDataModule(_cfg(tmp_path), seed=0, name=name)
    dm.setup("fit")
    k = 10 if name == "cifar10" else 100
    assert len(dm.classes) == k and dm.classes[0] == "class_00"
    sizes = {s: len(d) for s, d in dm.datasets.items()}
    assert sizes["train"] + sizes["val"] == n_train and sizes["test"] == 30
    assert sizes["val"] == math.ceil(n_train * 0.1 / 0.9)  # sklearn rounds the test share up
    val_counts = np.bincount(dm.datasets["val"].targets, minlength=k)
    assert val_counts.max() - val_counts.min() <= 1  # stratified
    w = dm.class_weights
    assert w.shape == (k,) and torch.isclose(w.mean(), torch.tensor(1.0))
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (16, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    # the eval transform standardises each channel with the training split's statistics
    train = dm.datasets["train"]
    eval_tf = dm.datasets["val"].transform
    xs = torch.stack([eval_tf(torch.from_numpy(im).permute(2, 0, 1).float() / 255) for im in train.images])
    torch.testing.assert_close(xs.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(xs.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3, rtol=0)


def test_channel_stats_match_numpy():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(50, 8, 8, 3), dtype=np.uint8)
    mean, std = channel_stats(imgs, chunk=7)
    ref = imgs.astype(np.float64) / 255
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 1, 2)), atol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=(0, 1, 2)), atol=1e-9)


def test_train_split_is_seeded_by_split_seed(tmp_path):
    write_synthetic_cifar(tmp_path, "cifar10", n_train=200, n_test=10)
    a, b, c = (CIFARDataModule(_cfg(tmp_path, split_seed=s), name="cifar10") for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup()
    assert a.stats["val_indices_sha256"] == b.stats["val_indices_sha256"] != c.stats["val_indices_sha256"]


def test_missing_data_fails_fast_offline_with_where_to_put_the_files(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        load_cifar("cifar10", tmp_path, train=True, download=False)
    monkeypatch.setenv("POPEVIT_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"cannot be downloaded .*POPEVIT_OFFLINE.*cifar-100-python.tar.gz"):
        CIFARDataModule(_cfg(tmp_path), name="cifar100").setup()
    assert time.perf_counter() - t0 < 10  # fails fast: no network wait (a loaded CI machine needs headroom)
    with pytest.raises(ValueError, match="did you mean 'cifar10'"):
        load_cifar("cifar-10", tmp_path, train=True)  # type: ignore[arg-type]


def test_the_training_module_fits_on_cifar_batches(tmp_path):
    """The DataModule plugs into the engine's ClassifierModule and Trainer as MRIDataModule does."""
    from popevit.training.module import ClassifierModule
    from popevit.training.run import model_kwargs

    write_synthetic_cifar(tmp_path / "c", "cifar10", n_train=200, n_test=20)
    cfg = load_config(None, ["model.name=vit_p8_w32_d2", "data.preprocess.img_size=32", "data.preprocess.in_chans=3"])
    dm = CIFARDataModule(_cfg(tmp_path / "c"), seed=0, name="cifar10")
    dm.setup("fit")
    module = ClassifierModule(
        cfg.model.name, model_kwargs(cfg, len(dm.classes)), dm.classes, cfg.optim.model_dump(mode="json"),
        dm.class_weights.tolist(), 0,
    )  # fmt: skip
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    val = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert 0.0 <= val["val/auroc_macro"] <= 1.0 and np.isfinite(val["val/loss"])
