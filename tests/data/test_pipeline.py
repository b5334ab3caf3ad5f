"""Preprocessing, decode-once cache, transforms, dataset and the Lightning DataModule."""

from __future__ import annotations

import multiprocessing as mp
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from popevit.config import AugmentConfig, DataConfig, PreprocessConfig
from popevit.data import make_split
from popevit.data.cache import ArrayCache, CacheWriteError, default_cache_dir
from popevit.data.datamodule import EpochShuffleSampler, MRIDataModule
from popevit.data.dataset import ImageDataset, _warm
from popevit.data.decode import load_image
from popevit.data.preprocess import (
    background_level,
    crop_pad_square,
    foreground_box,
    preprocess_framed,
    preprocess_image,
    to_tensor,
)
from popevit.data.transforms import build_eval_transform, build_train_transform

CFG = PreprocessConfig(img_size=32)


def _head(bg: int, fg: int, shape=(60, 90), box=(10, 50, 30, 80)) -> np.ndarray:
    a = np.full(shape, bg, np.uint8)
    t, b, l, r = box
    yy, xx = np.mgrid[t:b, l:r]
    a[t:b, l:r] = np.where(
        ((yy - (t + b) / 2) / ((b - t) / 2)) ** 2 + ((xx - (l + r) / 2) / ((r - l) / 2)) ** 2 < 1, fg, bg
    )
    return a


def test_foreground_crop_on_black_and_white_backgrounds():
    black, white = _head(0, 180), _head(255, 90)
    assert foreground_box(black.astype(np.float32)) == foreground_box(white.astype(np.float32))
    t, l, b, r = foreground_box(black.astype(np.float32))
    assert 8 <= t <= 11 and 47 <= b <= 52 and 28 <= l <= 31 and 79 <= r <= 82


def _noisy_head() -> np.ndarray:
    """A 300x420 float image: an off-centre ellipse (rows 30-250, columns 120-380) on a dark noisy background."""
    yy, xx = np.mgrid[:300, :420]
    head = np.where(((yy - 140) / 110) ** 2 + ((xx - 250) / 130) ** 2 < 1, 150.0, 8.0)
    return (head + np.random.default_rng(0).normal(0, 4, head.shape)).astype(np.float32)


def test_foreground_box_honours_margin():
    gray = _noisy_head()
    t0, l0, b0, r0 = foreground_box(gray, margin=0.0)
    t1, l1, b1, r1 = foreground_box(gray, margin=0.1)
    m = round(0.1 * max(b0 - t0, r0 - l0))
    assert (t1, l1, b1, r1) == (t0 - m, l0 - m, b0 + m, r0 + m) and m > 20


def test_crop_pad_square_output_is_unchanged():
    """Golden crop recorded before foreground_box honoured its margin: cached arrays and results depend on it."""
    gray = _noisy_head()
    crop = gray[21:260, 111:390]  # (239, 279): the head box plus 2%, plus 2% of that again
    expected = np.full((279, 279), background_level(crop), np.float32)
    expected[20:259] = crop
    np.testing.assert_array_equal(crop_pad_square(gray), expected)


@pytest.mark.parametrize("head_mask", [False, True])
def test_framing_names_the_original_pixels_the_model_sees(head_mask):
    """Every pixel of the framed square comes from inside ``framing.box`` and every pixel of the box is in it; the
    resize scale is the model side over the square's side."""
    img = Image.fromarray(_head(0, 200, (120, 200), (20, 100, 60, 170)))
    framing = preprocess_framed(img, PreprocessConfig(img_size=32, head_mask=head_mask)).framing
    h, w = 120, 200
    index = np.arange(h * w, dtype=np.float32).reshape(h, w)  # each pixel labelled by its position
    square = index
    for step in framing.crops:
        square = step.apply(square, fill=-1.0)
    t, l, b, r = framing.box
    assert set(np.unique(square[square >= 0]).astype(int)) == set(index[t:b, l:r].astype(int).ravel())
    assert 0 < t < b < h and 0 < l < r < w and (b - t, r - l) != (h, w)
    assert framing.scale == 32 / framing.crops[-1].side


def test_preprocess_removes_size_and_framing():
    """The same head at two scales and framings preprocesses to nearly the same array."""
    small = Image.fromarray(_head(0, 200, (60, 90), (10, 50, 30, 70)))
    big = small.resize((180, 120), Image.Resampling.BILINEAR)
    big_padded = Image.new("L", (400, 200), 0)
    big_padded.paste(big, (150, 60))
    a, b = preprocess_image(small, CFG), preprocess_image(big_padded, CFG)
    assert a.shape == b.shape == (32, 32) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b.astype(int)).mean() < 12


def test_simple_crop_without_rescale_reproduces_the_plain_script(phantom_root):
    """``crop: max_fraction`` with ``rescale: false`` gives the pixels of scripts/plain_resnet18.py's loader: the box
    of the pixels above 10% of the maximum, zero padding and raw grey levels, on images of any size and mode."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).parents[2] / "scripts" / "plain_resnet18.py"
    spec = importlib.util.spec_from_file_location("plain_resnet18", script)
    plain = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plain)
    cfg = PreprocessConfig(img_size=48, crop="max_fraction", rescale=False, clip_percentiles=(0, 100))
    files = sorted(phantom_root.glob("*/*.png"))[::6]
    for path in files:
        img = Image.open(path)
        ours, theirs = preprocess_image(img, cfg).astype(int), plain.load(str(path), size=48).astype(int)
        assert np.abs(ours - theirs).max() <= 1, path  # PIL resizes their uint8 and our float: rounding only
        assert not np.array_equal(ours, preprocess_image(img, PreprocessConfig(img_size=48)))
    from popevit.data.preprocess import draft_size, settings_key

    full = PreprocessConfig(img_size=48, jpeg_draft=False)  # the script decodes JPEGs at full size
    assert draft_size(full) is None and draft_size(PreprocessConfig(img_size=48)) == (96, 96)
    assert len({settings_key(c) for c in (cfg, full, PreprocessConfig(img_size=48))}) == 3  # each its own cache
    deep = Image.fromarray(np.full((20, 20), 4000, np.uint16))  # 16-bit grey levels
    with pytest.raises(ValueError, match=r"rescale=false keeps 8-bit grey levels, but this image reaches 4000"):
        preprocess_image(deep, cfg)


def test_to_tensor_standardised_and_channels():
    arr = np.random.default_rng(0).integers(0, 255, (32, 32)).astype(np.uint8)
    x1 = to_tensor(arr, CFG)
    x3 = to_tensor(arr, PreprocessConfig(img_size=32, in_chans=3))
    assert x1.shape == (1, 32, 32) and x3.shape == (3, 32, 32) and x1.dtype == torch.float32
    assert abs(float(x1.mean())) < 1e-5 and abs(float(x1.std()) - 1) < 1e-4
    assert torch.equal(x3[0], x3[2]) and torch.allclose(
        build_eval_transform(CFG)(torch.from_numpy(arr)[None] / 255.0), x1
    )


def test_cache_keyed_by_content_and_settings(phantom_root, tmp_path):
    f = phantom_root / "glioma" / "glioma_0000.png"
    cache = ArrayCache(tmp_path, CFG)
    arr, digest = cache.load(f)
    assert np.array_equal(arr, preprocess_image(load_image(f), CFG))
    assert (cache.dir / digest[:2] / f"{digest}.npy").is_file()
    copy = tmp_path / "renamed.png"
    shutil.copy(f, copy)
    assert cache.load(copy)[1] == digest  # same content, same entry
    other = ArrayCache(tmp_path, PreprocessConfig(img_size=32, clip_percentiles=(1.0, 99.0)))
    assert other.dir != cache.dir and other.get(digest) is None  # settings change -> new key
    assert len(list(cache.dir.rglob("*.tmp"))) == 0


def _fill(args):
    paths, root = args
    ds = ImageDataset(paths, [0] * len(paths), CFG, cache_dir=root)
    return len(ds.prepare(workers=1))


def test_two_processes_fill_cache_at_once(phantom_root, tmp_path):
    paths = sorted((phantom_root / "meningioma").glob("*.png"))
    with mp.get_context("fork").Pool(2) as pool:
        assert pool.map(_fill, [(paths, tmp_path), (paths, tmp_path)]) == [0, 0]
    cache = ArrayCache(tmp_path, CFG)
    assert len(list(cache.dir.rglob("*.npy"))) == 12 and not list(cache.dir.rglob("*.tmp"))


def test_prepare_sends_only_cache_misses_to_worker_processes(phantom_root, tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    import popevit.data.dataset as dataset_mod
    from popevit.data.decode import read_bytes
    from popevit.data.dedup import content_hash

    pooled: list[str] = []

    class RecordingPool(ThreadPoolExecutor):  # the same map interface, in threads, recording what it is sent
        def map(self, fn, jobs, chunksize=1):
            jobs = list(jobs)
            pooled.extend(job[0] for job in jobs)
            return super().map(fn, jobs)

    monkeypatch.setattr(dataset_mod, "ProcessPoolExecutor", RecordingPool)
    paths = sorted((phantom_root / "meningioma").glob("*.png"))
    hashes = [content_hash(read_bytes(p)) for p in paths]
    ImageDataset(paths[:6], [0] * 6, CFG, cache_dir=tmp_path, content_hashes=hashes[:6]).prepare(workers=1)
    assert pooled == []

    ds = ImageDataset(paths, [0] * len(paths), CFG, cache_dir=tmp_path, content_hashes=hashes)
    assert ds.prepare(workers=2) == []
    assert pooled == [str(p) for p in paths[6:]]  # the warm half is read here, not sent to a worker
    for i, p in enumerate(paths):
        assert np.array_equal(ds.array(i), preprocess_image(load_image(p), CFG))

    pooled.clear()  # a warm cache starts no workers at all
    again = ImageDataset(paths, [0] * len(paths), CFG, cache_dir=tmp_path, content_hashes=hashes)
    assert again.prepare(workers=2) == [] and pooled == []
    unknown = ImageDataset(paths[:3], [0] * 3, CFG, cache_dir=tmp_path)  # no hashes: cannot tell, so decode
    assert unknown.prepare(workers=2) == [] and pooled == [str(p) for p in paths[:3]]


@pytest.mark.parametrize("where", ["prepare", "worker"])
def test_cache_write_failure_is_raised_not_a_dropped_image(phantom_root, tmp_path, monkeypatch, where):
    def disk_full(self, digest, arr):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ArrayCache, "put", disk_full)
    paths = sorted((phantom_root / "glioma").glob("*.png"))[:2]
    with pytest.raises(CacheWriteError, match=r"No space left on device.*\$POPEVIT_CACHE"):
        if where == "prepare":
            ImageDataset(paths, [0, 0], CFG, cache_dir=tmp_path).prepare(workers=1)
        else:
            _warm((str(paths[0]), None, tmp_path, CFG))  # what each process of prepare(workers>1) runs


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("POPEVIT_CACHE", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert default_cache_dir(tmp_path / "cfg") == tmp_path / "cfg"


def test_dataset_deterministic_and_batched_fetch(phantom_root, tmp_path):
    paths = sorted((phantom_root / "notumor").glob("*.png"))[:4]
    ds = ImageDataset(paths, [2] * 4, CFG, cache_dir=tmp_path)
    x, y = ds[1]
    assert x.shape == (1, 32, 32) and y == 2 and torch.equal(x, ds[1][0])
    batch = ds.__getitems__([0, 1])
    assert torch.allclose(batch[1][0], x, atol=1e-5)


def test_train_transform_random_eval_fixed():
    aug = AugmentConfig(rotation=15, translate=0.1, shear=5, random_resized_crop=(0.7, 1.0), brightness=0.1,
                        contrast=0.1, gamma=0.2, noise_std=0.05)  # fmt: skip
    cfg3 = PreprocessConfig(img_size=32, in_chans=3)
    tf = build_train_transform(aug, cfg3)
    x = torch.rand(1, 32, 32)
    torch.manual_seed(0)
    a = tf(x)
    torch.manual_seed(0)
    assert torch.equal(a, tf(x)) and a.shape == (3, 32, 32) and torch.isfinite(a).all()
    assert not torch.equal(a, tf(x))
    b = tf(torch.rand(5, 1, 32, 32))
    assert b.shape == (5, 3, 32, 32)
    assert torch.equal(b[:, 0], b[:, 2])  # noise identical across replicated channels
    ev = build_eval_transform(cfg3)
    assert torch.equal(ev(x), ev(x))
    off = build_train_transform(AugmentConfig(enabled=False), cfg3)
    assert torch.equal(off(x), ev(x))


def test_identity_augmentation_is_exact():
    """Zero-strength geometry (hflip only at p=1, twice) reproduces the image: the warp's coordinates are right."""
    tf = build_train_transform(AugmentConfig(rotation=0, translate=0, scale=(1, 1), hflip=1.0), CFG)
    x = torch.rand(1, 1, 32, 32)
    flipped = tf(x)
    assert torch.allclose(flipped, build_eval_transform(CFG)(x.flip(-1)), atol=1e-4)


def test_datamodule(messy_root, tmp_path):
    manifest = make_split(messy_root, tmp_path / "m.csv", cache_dir=tmp_path / "c")
    (messy_root / "glioma" / "glioma_0005.png").write_bytes(b"changed after the split")  # a file that went bad
    cfg = DataConfig(batch_size=8, cache_dir=tmp_path / "c", preprocess=CFG)
    dm = MRIDataModule(cfg, manifest, seed=3)
    dm.setup("fit")
    assert dm.classes == ["glioma", "meningioma", "notumor", "pituitary"]
    skipped = {p.name: why for p, why in dm.skipped}
    assert {"empty.jpg", "truncated.jpg", "corrupt.png", "bomb.png", "glioma_0005.png"} <= set(skipped)
    assert "changed since the manifest" in skipped["glioma_0005.png"]
    w = dm.class_weights
    assert w.shape == (4,) and abs(float(w.mean()) - 1) < 1e-6
    counts = torch.bincount(torch.tensor(dm.datasets["train"].targets), minlength=4).float()
    assert torch.allclose(w * counts, (w * counts)[0].expand(4))  # inverse frequency
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (8, 1, 32, 32) and yb.dtype == torch.int64
    vx, _ = next(iter(dm.val_dataloader()))
    assert torch.equal(vx, next(iter(dm.val_dataloader()))[0])
    n_test = sum(len(b[1]) for b in dm.test_dataloader())
    assert n_test == len(dm.datasets["test"])


def test_epoch_order_is_reproducible_and_resumable():
    s = EpochShuffleSampler(20, seed=5)
    s.set_epoch(3)
    first = list(s)
    t = EpochShuffleSampler(20, seed=5)
    t.set_epoch(3)
    assert list(t) == first and sorted(first) == list(range(20))
    t.set_epoch(4)
    assert list(t) != first


def test_neighbouring_seeds_do_not_replay_each_others_epochs():
    def order(seed: int, epoch: int) -> list[int]:
        s = EpochShuffleSampler(50, seed=seed)
        s.set_epoch(epoch)
        return list(s)

    assert order(0, 1) != order(1, 0) and order(3, 7) != order(7, 3) and order(2, 5) != order(5, 2)
    assert order(1, 0) == order(1, 0)


@pytest.mark.parametrize("in_chans", [1, 3])
def test_datamodule_channels(phantom_root, tmp_path, in_chans):
    manifest = make_split(phantom_root, tmp_path / "m.csv")
    cfg = DataConfig(
        batch_size=4, cache_dir=tmp_path / "c", preprocess=PreprocessConfig(img_size=32, in_chans=in_chans)
    )
    dm = MRIDataModule(cfg, manifest)
    dm.setup()
    assert next(iter(dm.train_dataloader()))[0].shape == (4, in_chans, 32, 32)
