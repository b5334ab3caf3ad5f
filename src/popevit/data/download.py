"""``popevit data download``: fetch a public dataset through kagglehub, or fail fast with directions when offline.

kagglehub is a heavy import (a network client): it is imported only when a download is asked for."""

from __future__ import annotations

import shutil
import socket
import threading
from pathlib import Path

from popevit.registry import Registry

KAGGLE_HOST = "www.kaggle.com"


def _kaggle_brain_tumor(out: Path) -> Path:
    import kagglehub

    path = Path(kagglehub.dataset_download("masoudnickparvar/brain-tumor-mri-dataset"))
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(path, out, dirs_exist_ok=True)
    return out


DATASETS: Registry = Registry("dataset")
DATASETS.add("kaggle-brain-tumor-mri", {
    "fetch": _kaggle_brain_tumor,
    "page": "https://www.kaggle.com/datasets/masoudnickparvar/brain-tumor-mri-dataset",
    "layout": "Training/<class>/*.jpg and Testing/<class>/*.jpg",
})  # fmt: skip


def reachable(host: str = KAGGLE_HOST, port: int = 443, timeout: float = 3.0) -> bool:
    """True when a TCP connection to ``host:port`` opens within ``timeout`` s (DNS included, run in a thread)."""
    result: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result.append(True)
        except OSError:
            result.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(result and result[0])


def download(name: str, out: Path, *, timeout: float = 3.0) -> Path:
    """Download dataset ``name`` into ``out``.

    Raises:
        ValueError: unknown dataset (with did-you-mean).
        RuntimeError: no network or no credentials; the message says where to get the data and how to use it.
    """
    spec = DATASETS.get(name)
    manual = (
        f"download it by hand from {spec['page']}, unpack it ({spec['layout']}), and point popevit at it, e.g. "
        f"`popevit data inspect DIR/Training` or `popevit train --data DIR/Training`"
    )
    if not reachable(timeout=timeout):
        raise RuntimeError(f"cannot reach {KAGGLE_HOST} (offline?); {manual}")
    try:
        return spec["fetch"](Path(out))
    except Exception as err:
        raise RuntimeError(
            f"kagglehub could not download {name!r} ({type(err).__name__}: {err}). Kaggle may need credentials "
            f"(~/.kaggle/kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY); otherwise {manual}"
        ) from None
