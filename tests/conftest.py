"""Shared fixtures: seeded phantom datasets in tmp dirs, and the real Kaggle folder (skipped when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REAL_DATA = Path(
    os.environ.get("POPEVIT_REAL_DATA", Path(__file__).resolve().parents[2] / "shared/data/brain-tumor-mri/Training")
)


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Keep the decode-once cache of the whole session (subprocesses included) out of the user's ~/.cache."""
    old = os.environ.get("POPEVIT_CACHE")
    os.environ["POPEVIT_CACHE"] = str(tmp_path_factory.mktemp("popevit-cache"))
    yield
    if old is None:
        os.environ.pop("POPEVIT_CACHE", None)
    else:
        os.environ["POPEVIT_CACHE"] = old


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """A small seeded phantom dataset (4 classes x 12 images, 64 px) shared by the whole session. Read-only."""
    from popevit.data.phantoms import synthesize

    return synthesize(tmp_path_factory.mktemp("phantoms") / "data", per_class=12, size=64, seed=0)


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """The Kaggle Brain Tumor MRI Training folder; tests using it skip on machines that do not have it."""
    if not REAL_DATA.is_dir():
        pytest.skip(f"real data not found at {REAL_DATA} (set POPEVIT_REAL_DATA to the Kaggle Training folder)")
    return REAL_DATA
