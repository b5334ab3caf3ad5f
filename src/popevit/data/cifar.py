"""CIFAR-10/100 (Krizhevsky, 2009) through torchvision, as a DataModule with the interface of ``MRIDataModule``.

CIFAR is a small-image sanity check of the positional encodings (configs/experiments/cifar_vit.yaml) on the same engine.
torchvision describes CIFAR's on-disk format (pickled batches under ``cifar-10-batches-py/`` or ``cifar-100-python/``)
and downloads the archive when asked (it checks the archive's md5). Batches are read without running code
(:class:`PlainUnpickler`), after their md5 is checked against torchvision's published sums. Offline, a missing
dataset fails at once with a message saying where to put the files. The official test set is the test split;
validation is a stratified, seeded slice of the official training set (fraction ``ratios[1] / (ratios[0] +
ratios[1])``). Images are normalised per channel with the training split's own mean and std; augmentation follows
:class:`popevit.config.AugmentConfig` (affine, flip, random resized crop).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import socket
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision.transforms import v2

from popevit.config import AugmentConfig, DataConfig, PreprocessConfig
from popevit.data.cache import default_cache_dir
from popevit.data.datamodule import SplitDataModule
from popevit.registry import did_you_mean

log = logging.getLogger(__name__)
CifarName = Literal["cifar10", "cifar100"]
OFFLINE_ENV = "POPEVIT_OFFLINE"


class _FilesPresent:
    """torchvision's CIFAR class with a load-time check that the files exist (the download itself is md5-checked).

    torchvision would ``pickle.load`` every batch file, and a pickle can run any code: a tampered batch in a data
    folder would execute on ``popevit train``. popevit never lets it: :func:`read_batch` verifies torchvision's
    published md5 of each file first and, whatever the outcome, unpickles with :class:`PlainUnpickler`, which builds
    dicts, lists, strings, numbers and numeric numpy arrays only and refuses any other object.
    """

    base_folder: str
    train_list: list[list[str]]
    test_list: list[list[str]]
    meta: dict[str, str]
    root: str

    def _check_integrity(self) -> bool:
        folder = Path(self.root) / self.base_folder
        return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)


class _CIFAR10(_FilesPresent, datasets.CIFAR10):
    pass


class _CIFAR100(_FilesPresent, datasets.CIFAR100):
    pass


READERS: dict[str, type[datasets.CIFAR10]] = {"cifar10": _CIFAR10, "cifar100": _CIFAR100}

# What CIFAR's pickles may name: numpy's array reconstruction (Python 2 and 3, numpy 1 and 2 module paths).
_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy.core.numeric", "numpy._core.numeric")
_ALLOWED = frozenset(
    [(m, n) for m in _NUMPY_CORE for n in ("_reconstruct", "_frombuffer", "scalar")]
    + [("numpy", "ndarray"), ("numpy", "dtype")]
)


class PlainUnpickler(pickle.Unpickler):
    """An unpickler that builds plain data only (dicts, lists, strings, numbers, numpy arrays): a pickle naming any
    other callable (``os.system``, ``builtins.eval``, ...) is refused before it is called, so no code runs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it names {module}.{name}, which a CIFAR batch never holds")


def read_batch(path: Path, md5: str | None = None) -> tuple[dict[str, Any], bool]:
    """One CIFAR batch or meta file, read without running code.

    Args:
        path: the pickled batch.
        md5: torchvision's published md5 of the file, checked first.

    Returns:
        ``(content, verified)``: the unpickled dict and whether the file is the published one.

    Raises:
        ValueError: the file holds anything but plain data (code, objects), or is not a CIFAR batch at all.
    """
    verified = md5 is not None and datasets.utils.check_integrity(str(path), md5)
    try:
        with open(path, "rb") as f:
            content = PlainUnpickler(f, encoding="latin1").load()
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"{path}: refused, not read: {err}; it is not the published CIFAR file (md5 differs), and unpickling it "
            f"could run code. Delete the folder and let popevit download CIFAR again, or extract the official archive"
        ) from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError, OverflowError) as err:
        raise ValueError(f"{path}: not a CIFAR batch file ({type(err).__name__}: {err}); it is damaged") from None
    if not isinstance(content, dict) or any(isinstance(v, np.ndarray) and v.dtype == object for v in content.values()):
        raise ValueError(f"{path}: not a CIFAR batch file (expected a dict of arrays and lists)")
    return content, verified


def _read_split(cls: type[datasets.CIFAR10], root: Path, train: bool) -> datasets.CIFAR10:
    """What torchvision's ``cls(root, train)`` builds, read through :func:`read_batch` instead of ``pickle.load``."""
    folder = Path(root) / cls.base_folder
    files = cls.train_list if train else cls.test_list
    data, targets, unverified = [], [], []
    for name, md5 in files:
        entry, ok = read_batch(folder / name, md5)
        if not ok:
            unverified.append(name)
        try:
            data.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            targets.extend(int(t) for t in entry["labels" if "labels" in entry else "fine_labels"])
        except (KeyError, ValueError, TypeError) as err:
            raise ValueError(
                f"{folder / name}: not a CIFAR batch file (no {err} in it, or of the wrong shape)"
            ) from None
    meta, ok = read_batch(folder / cls.meta["filename"], cls.meta["md5"])
    if not ok:
        unverified.append(cls.meta["filename"])
    if unverified:
        log.warning(
            "%s: %s differ from torchvision's published md5 sums (not the official files): read as plain arrays",
            folder, ", ".join(unverified),
        )  # fmt: skip
    ds = cls.__new__(cls)
    ds.root, ds.train, ds.transform, ds.target_transform = str(root), train, None, None
    ds.data = np.vstack(data).transpose((0, 2, 3, 1)) if data else np.zeros((0, 32, 32, 3), np.uint8)  # (N, H, W, C)
    ds.targets = targets
    if len(ds.targets) != len(ds.data):
        raise ValueError(f"{folder}: {len(ds.data)} images but {len(ds.targets)} labels; the files are damaged")
    ds.classes = [str(c) for c in meta[cls.meta["key"]]]
    ds.class_to_idx = {c: i for i, c in enumerate(ds.classes)}
    return ds


def default_root(cfg: DataConfig) -> Path:
    """``data.data`` if set, else ``<cache dir>/torchvision`` (``$POPEVIT_CACHE`` or ``~/.cache/popevit``)."""
    return Path(cfg.data) if cfg.data is not None else default_cache_dir(cfg.cache_dir) / "torchvision"


def _online(url: str, timeout: float = 5.0) -> str | None:
    """``None`` when ``url``'s host accepts a TCP connection, else the reason it does not."""
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        return f"{OFFLINE_ENV} is set"
    host = url.split("://", 1)[1].split("/", 1)[0]
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError as err:
        return f"cannot reach {host}: {err}"
    return None


def load_cifar(name: CifarName, root: Path, train: bool, download: bool = True) -> datasets.CIFAR10:
    """Read a CIFAR split with torchvision, downloading it first when missing (and allowed).

    Args:
        name: ``cifar10`` or ``cifar100``.
        root: folder holding (or receiving) ``cifar-10-batches-py/`` / ``cifar-100-python/``.
        train: official training split if true, else the official test split.
        download: fetch the archive when the files are missing.

    Returns:
        The torchvision dataset: ``.data`` uint8 (N, 32, 32, 3), ``.targets``, ``.classes``.
    """
    if name not in READERS:
        raise ValueError(f"unknown dataset {name!r}{did_you_mean(name, list(READERS))} (known: {', '.join(READERS)})")
    cls = READERS[name]
    probe = cls.__new__(cls)
    probe.root = str(root)
    if not probe._check_integrity():
        folder = Path(root) / cls.base_folder
        where = f"extract {cls.filename} ({cls.url}) into {root} so that {folder}/ holds its batch files"
        if not download:
            raise FileNotFoundError(f"{name} not found under {folder}; {where}, or allow the download")
        reason = _online(cls.url)
        if reason is not None:
            raise RuntimeError(f"{name} is not in {folder} and cannot be downloaded ({reason}); {where}")
        Path(root).mkdir(parents=True, exist_ok=True)
        try:
            datasets.utils.download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)
        except (OSError, RuntimeError) as err:
            raise RuntimeError(f"downloading {name} failed ({err}); {where}") from err
    return _read_split(cls, Path(root), train)


class ArrayDataset(Dataset):
    """(x, y) pairs from a uint8 (N, H, W, 3) array: x = transform(float (3, H, W) in [0, 1]), y = int label."""

    def __init__(self, images: np.ndarray, targets: list[int], transform: nn.Module) -> None:
        self.images, self.targets, self.transform = images, list(targets), transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(self.images[i]).permute(2, 0, 1).float().div_(255.0)  # (3, H, W)
        return self.transform(x), self.targets[i]


def channel_stats(images: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, H, W, C) images in [0, 1], accumulated in float64 chunks."""
    total = np.zeros(images.shape[-1])
    sq = np.zeros(images.shape[-1])
    for i in range(0, len(images), chunk):
        block = images[i : i + chunk].astype(np.float64) / 255.0
        total += block.sum(axis=(0, 1, 2))
        sq += (block**2).sum(axis=(0, 1, 2))
    n = images.shape[0] * images.shape[1] * images.shape[2]
    mean = total / n
    std = np.sqrt(np.maximum(sq / n - mean**2, 1e-12))
    return mean.tolist(), std.tolist()


def build_cifar_transform(
    pre: PreprocessConfig, aug: AugmentConfig | None, mean: list[float], std: list[float]
) -> v2.Compose:
    """[0, 1] (3, 32, 32) -> normalised (C, S, S); random augmentation when ``aug`` is given and enabled."""
    s = pre.img_size
    ops: list[nn.Module] = []
    if aug is not None and aug.enabled and aug.random_resized_crop is not None:
        ops.append(v2.RandomResizedCrop(s, scale=tuple(aug.random_resized_crop), antialias=True))
    else:
        ops.append(v2.Resize(s, antialias=True))
    if aug is not None and aug.enabled:
        if aug.rotation > 0 or aug.translate > 0 or tuple(aug.scale) != (1.0, 1.0) or aug.shear > 0:
            ops.append(v2.RandomAffine(aug.rotation, (aug.translate, aug.translate), tuple(aug.scale), aug.shear))
        if aug.hflip > 0:
            ops.append(v2.RandomHorizontalFlip(aug.hflip))
    ops.append(v2.Normalize(mean, std))
    if pre.in_chans == 1:
        ops.append(v2.Grayscale(1))
    return v2.Compose(ops)


class CIFARDataModule(SplitDataModule):
    """Loaders for CIFAR-10/100 with ``MRIDataModule``'s interface (``classes``, ``class_weights``, ``setup``).

    Args:
        cfg: data settings; ``data.data`` is the torchvision root (see :func:`default_root`), ``split_seed`` and
            ``ratios`` carve validation out of the official training set, ``preprocess``/``augment`` as for MRI.
        seed: seed of the training order.
        name: ``cifar10`` or ``cifar100`` (default: ``cfg.dataset``).
        download: fetch the archive when missing (default: ``cfg.download`` if present, else true).
    """

    def __init__(
        self, cfg: DataConfig, seed: int = 0, name: CifarName | None = None, download: bool | None = None
    ) -> None:
        super().__init__()
        self.cfg, self.seed = cfg, seed
        self.name: CifarName = name or getattr(cfg, "dataset", None)  # type: ignore[assignment]
        if self.name not in READERS:
            raise ValueError(f"CIFARDataModule needs name='cifar10' or 'cifar100', got {self.name!r}")
        self.download = download if download is not None else bool(getattr(cfg, "download", True))
        self.root = default_root(cfg)
        self.classes: list[str] = []
        self.datasets: dict[str, ArrayDataset] = {}
        self.skipped: list[tuple[Path, str]] = []  # CIFAR has no undecodable files; kept for interface parity
        self.stats: dict[str, Any] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        from sklearn.model_selection import train_test_split  # heavy, and only a validation split needs it

        full = load_cifar(self.name, self.root, train=True, download=self.download)
        test = load_cifar(self.name, self.root, train=False, download=False)
        self.classes = list(full.classes)
        targets = np.asarray(full.targets)
        r_train, r_val, _ = self.cfg.ratios
        val_frac = r_val / (r_train + r_val)
        idx = np.arange(len(targets))
        train_idx, val_idx = train_test_split(
            idx, test_size=val_frac, stratify=targets, random_state=self.cfg.split_seed
        )
        train_idx, val_idx = np.sort(train_idx), np.sort(val_idx)
        mean, std = channel_stats(full.data[train_idx])
        pre = self.cfg.preprocess
        train_tf = build_cifar_transform(pre, self.cfg.augment, mean, std)
        eval_tf = build_cifar_transform(pre, None, mean, std)
        self.datasets = {
            "train": ArrayDataset(full.data[train_idx], targets[train_idx].tolist(), train_tf),
            "val": ArrayDataset(full.data[val_idx], targets[val_idx].tolist(), eval_tf),
            "test": ArrayDataset(np.asarray(test.data), list(test.targets), eval_tf),
        }
        self.stats = {
            "dataset": self.name,
            "root": str(self.root),
            "sizes": {k: len(v) for k, v in self.datasets.items()},
            "mean": mean,
            "std": std,
            "val_indices_sha256": _sha256(val_idx),
        }


def _sha256(indices: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(indices, dtype=np.int64).tobytes()).hexdigest()


def write_synthetic_cifar(
    root: Path, name: CifarName = "cifar10", n_train: int = 100, n_test: int = 20, seed: int = 0
) -> Path:
    """Write a small dataset in CIFAR's on-disk format (pickled batches + meta) for offline tests and demos.

    Each class is a colour with noise, so a model can learn it. Args: ``root`` receives the CIFAR base folder;
    ``n_train``/``n_test`` images (classes cycle); returns ``root``.
    """
    cls = READERS[name]
    k = 10 if name == "cifar10" else 100
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, size=(k, 3))
    folder = Path(root) / cls.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    label_key = "labels" if name == "cifar10" else "fine_labels"

    def batch(n: int, offset: int) -> dict[str, Any]:
        labels = [(i + offset) % k for i in range(n)]
        img = palette[labels][:, :, None] + rng.normal(0, 25, size=(n, 3, 1024))  # (n, 3, 32*32) channel-planar
        return {"data": np.clip(img, 0, 255).astype(np.uint8).reshape(n, 3072), label_key: labels}

    files = [name for name, _ in cls.train_list]
    per = -(-n_train // len(files))
    for j, fname in enumerate(files):
        n = min(per, n_train - j * per)
        with (folder / fname).open("wb") as f:
            pickle.dump(batch(max(n, 0), j * per), f)
    with (folder / cls.test_list[0][0]).open("wb") as f:
        pickle.dump(batch(n_test, 0), f)
    names = [f"class_{i:02d}" for i in range(k)]
    with (folder / cls.meta["filename"]).open("wb") as f:
        pickle.dump({cls.meta["key"]: names}, f)
    return Path(root)
