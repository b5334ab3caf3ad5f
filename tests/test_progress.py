"""Quiet, visible progress: third-party banners filtered at the source, bars only on a terminal."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import warnings

import pytest

from popevit import progress
from popevit.progress import LIGHTNING_LOGGERS, quiet_third_party, track


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("name", LIGHTNING_LOGGERS)
def test_lightning_banners_and_tips_are_dropped_but_its_other_messages_pass(name):
    log = logging.getLogger(name)
    handler, level = _Collect(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        quiet_third_party()
        quiet_third_party()  # idempotent: one filter, not two
        for msg in (
            "GPU available: False, used: False",
            "TPU available: False, using: 0 TPU cores",
            "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](...)",
            "💡 Tip: For seamless cloud uploads and versioning, try installing [litmodels](...)",
            "Loading `train_dataloader` to estimate number of stepping batches.",
            "`Trainer.fit` stopped: `max_epochs=8` reached.",
            "LOCAL_RANK: 0 - CUDA_VISIBLE_DEVICES: [0]",
        ):
            log.info(msg)
        log.info("`Trainer.fit` stopped: No training batches.")  # unusual endings still show
        log.warning("The number of training batches (3) is smaller than the logging interval")
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
    assert handler.messages == [
        "`Trainer.fit` stopped: No training batches.",
        "The number of training batches (3) is smaller than the logging interval",
    ]
    assert sum(isinstance(f, type(progress._FILTER)) for f in log.filters) == 1


def test_only_the_pytree_deprecation_is_ignored():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        warnings.warn(
            "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and "
            "treespec.is_leaf()` instead.",
            FutureWarning,
            stacklevel=1,
        )
        warnings.warn("some other future change", FutureWarning, stacklevel=1)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == [
        "some other future change",
        "`isinstance(treespec, LeafSpec)` is deprecated",
    ]


def test_bars_are_silent_off_a_terminal_and_drawn_when_forced(monkeypatch):
    monkeypatch.delenv(progress.PROGRESS_ENV, raising=False)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    assert not progress.enabled()
    assert list(track(range(5), "counting")) == [0, 1, 2, 3, 4]
    assert err.getvalue() == ""

    monkeypatch.setenv(progress.PROGRESS_ENV, "1")
    assert progress.enabled()
    seen = []
    for i in track(range(3), "outer"):
        assert progress.active()
        seen += [(i, j) for j in track(iter(range(2)), "inner", total=2)]  # nested: one live display
    assert seen == [(i, j) for i in range(3) for j in range(2)] and not progress.active()
    with progress.bar("trials", 4) as done:
        done(2)
    monkeypatch.setenv(progress.PROGRESS_ENV, "0")
    assert not progress.enabled()


def test_train_prints_no_third_party_noise_and_reads_popevit_data(phantom_root, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env.update({"OMP_NUM_THREADS": "1", "POPEVIT_DATA": str(phantom_root)})
    sets = ["model.name=vit_tiny", "data.preprocess.img_size=32", "train.max_epochs=1", "train.threads=1"]
    sets.append("train.log_every_n_steps=1")  # a real warning on a run this small, not noise
    proc = subprocess.run(
        [sys.executable, "-m", "popevit.cli.main", "train", "--out", str(tmp_path / "run")]
        + [a for s in sets for a in ("--set", s)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    for noise in ("GPU available", "TPU available", "Tip:", "LeafSpec", "estimate number of stepping", "it/s"):
        assert noise not in proc.stdout + proc.stderr, noise
    # only popevit's own notice of the phantoms' metadata.csv and masks/, which are not training images
    assert all(line.startswith(("skipped ", " ")) for line in proc.stderr.splitlines()), proc.stderr
    assert proc.stdout.startswith("done in ") and "run folder:" in proc.stdout
    assert f"data: {phantom_root}" in (tmp_path / "run" / "config.yaml").read_text()
