"""Faults that need a real ``popevit`` process: a full disk, SIGTERM and Ctrl-C, a FIFO among the images.

A full disk is simulated with the file-size limit (``RLIMIT_FSIZE``, SIGXFSZ ignored): every write past the limit
fails with ``EFBIG`` as a full disk fails with ``ENOSPC``. Signals are sent to the child by its pid.
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.reliability.conftest import SETS, TINY
from tests.reliability.corpus import make_fifo, phantom_folder, snapshot

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _popevit(*args: object, limit_bytes: int | None = None, **kw) -> subprocess.Popen:
    def setup() -> None:
        # A suite started in the background by a non-interactive shell inherits SIGINT ignored, and Python then
        # never raises KeyboardInterrupt: give the command the terminal's Ctrl-C that a user has.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if limit_bytes is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.Popen(
        [sys.executable, "-m", "popevit.cli.main", *map(str, args)],
        env={**ENV, **kw.pop("env", {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=setup,
        **kw,
    )


def _wait_for(cond: Callable[[], bool], proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, f"finished before the fault: {proc.communicate()}"
        assert time.monotonic() < deadline, "timed out waiting for the process"
        time.sleep(0.05)


def _no_traceback(err: str, out: str = "") -> None:
    assert "Traceback" not in err + out, err


@pytest.fixture(scope="module")
def many_images(tmp_path_factory) -> Path:
    """Enough phantoms (4 x 40 at 96 px) that a split takes a few seconds: long enough to be interrupted."""
    return phantom_folder(tmp_path_factory.mktemp("faults") / "data", per_class=40, size=96)


def test_a_fifo_among_the_images_does_not_hang_split(tmp_path):
    data = tmp_path / "data"
    phantom_folder(data, per_class=10)
    make_fifo(data / "glioma" / "pipe.jpg")
    proc = _popevit("data", "split", data, "--out", tmp_path / "m.csv", env={"POPEVIT_CACHE": str(tmp_path / "c")})
    out, err = proc.communicate(timeout=300)  # opening the FIFO would block forever
    assert proc.returncode == 0, err
    _no_traceback(err, out)
    assert "pipe.jpg" in err and "not a regular file" in err


@pytest.mark.parametrize("what", ["manifest", "config", "data"])
def test_a_fifo_given_as_a_file_is_refused(what, tmp_path, base_data):
    """Named on the command line, a FIFO is never opened (it would block): in-process, the check comes first."""
    from tests.reliability.conftest import check, invoke

    fifo = make_fifo(tmp_path / f"{what}.fifo")
    args = {"manifest": ["--manifest", fifo], "config": ["--config", fifo, "--data", base_data],
            "data": ["--data", fifo]}[what]  # fmt: skip
    before = snapshot(tmp_path)
    out = invoke(["train", *args, "--out", tmp_path / "run"])
    check(out, 2, [f"{what}.fifo"], before, snapshot(tmp_path))


def test_a_full_disk_while_splitting_keeps_the_old_manifest(tmp_path, base_data):
    good = tmp_path / "m.csv"
    good.write_text("path,label,split\n/elsewhere/a.png,glioma,train\n")
    before = snapshot(tmp_path)
    cache = {"POPEVIT_CACHE": str(tmp_path / "c")}
    proc = _popevit("data", "split", base_data, "--out", good, limit_bytes=1024, env=cache)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    _no_traceback(err, out)
    assert "m.csv" in err and "free disk space" in err
    after = {p: h for p, h in snapshot(tmp_path).items() if not p.startswith(str(tmp_path / "c"))}
    assert after == {p: h for p, h in before.items() if not p.startswith(str(tmp_path / "c"))}


def test_a_full_disk_while_writing_a_report_keeps_the_old_one(tmp_path, base_data):
    report = tmp_path / "inspect.json"
    report.write_text('{"old": true}')
    cache = {"POPEVIT_CACHE": str(tmp_path / "c")}
    assert _popevit("data", "inspect", base_data, env=cache).wait(timeout=300) == 0  # fingerprints cached first
    proc = _popevit("data", "inspect", base_data, "--json", report, limit_bytes=400, env=cache)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "inspect.json" in err, err
    _no_traceback(err, out)
    assert report.read_text() == '{"old": true}' and not list(tmp_path.glob(".inspect.json.*"))


@pytest.mark.parametrize(("sig", "code", "says"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_a_signal_during_a_split_ends_in_one_line(sig, code, says, tmp_path, many_images):
    cache = tmp_path / "c"
    old = tmp_path / "m.csv"
    old.write_text("path,label,split\n")
    proc = _popevit("data", "split", many_images, "--out", old, "--workers", "1", env={"POPEVIT_CACHE": str(cache)})
    _wait_for(lambda: any(cache.rglob("*.json")), proc)  # fingerprinting has begun: the command is running
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    _no_traceback(err, out)
    assert says in err and len(err.strip().splitlines()) == 1, err
    assert old.read_text() == "path,label,split\n" and not list(tmp_path.glob(".m.csv.*"))


def test_sigterm_in_training_saves_nothing_half_made_and_says_how_to_resume(tmp_path, base_data):
    """A scheduler's preemption: exit 143, the last finished epoch's checkpoint intact, the resume command printed,
    and the run accepted by --resume (which the slow test below carries to the end)."""
    from popevit.config import load_config
    from popevit.training.rundir import check_out_dir

    run = tmp_path / "run"
    args = ["train", "--data", base_data, "--out", run, *SETS, "--set", "train.max_epochs=500"]
    proc = _popevit(*args)
    _wait_for(lambda: (run / "checkpoints" / "last.ckpt").is_file(), proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    _no_traceback(err, out)
    assert "training stopped by SIGTERM" in err and "--resume" in err.splitlines()[-1], err
    assert not (run / "run.json").exists() and not list(run.rglob("*.tmp"))
    import torch

    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] >= 0
    cfg = load_config(None, [*TINY, "train.max_epochs=500", f"data.data={base_data}", "data.manifest=null"])
    check_out_dir(run, True, cfg)  # --resume takes it


@pytest.mark.slow
def test_sigterm_then_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, base_data):
    from safetensors.torch import load_file

    sets = [*SETS, "--set", "train.max_epochs=6", "--set", "train.limit_train_batches=2"]
    ref = _popevit("train", "--data", base_data, "--out", tmp_path / "ref", *sets)
    run = tmp_path / "run"
    proc = _popevit("train", "--data", base_data, "--out", run, *sets)
    _wait_for(lambda: (run / "checkpoints" / "last.ckpt").is_file(), proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 143, err
    resume = err.strip().splitlines()[-1].split("resume with: ", 1)[1].split()
    assert resume[0] == "popevit" and resume[-1] == "--resume"
    again = _popevit(*resume[1:])
    _, err2 = again.communicate(timeout=600)
    assert again.returncode == 0, err2
    assert ref.wait(timeout=600) == 0
    a, b = load_file(str(tmp_path / "ref" / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


@pytest.mark.slow
def test_a_full_disk_while_checkpointing_is_one_line_and_leaves_no_temporary_file(tmp_path, base_data):
    run = tmp_path / "run"
    proc = _popevit("train", "--data", base_data, "--out", run, *SETS, limit_bytes=200_000,
                    env={"POPEVIT_CACHE": str(tmp_path / "c")})  # fmt: skip
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err
    _no_traceback(err, out)
    assert ".ckpt" in err and "could not write the checkpoint" in err and "--resume" in err
    assert not list(run.rglob("*.tmp"))


def test_debug_prints_the_traceback(tmp_path):
    proc = _popevit("data", "split", tmp_path / "nodata", "--out", tmp_path / "m.csv", env={"POPEVIT_DEBUG": "1"})
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" in err and "ValueError" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through any permissions")
def test_an_unwritable_output_folder_is_one_line(tmp_path, base_data):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    proc = _popevit("data", "split", base_data, "--out", locked / "m.csv", env={"POPEVIT_CACHE": str(tmp_path / "c")})
    out, err = proc.communicate(timeout=300)
    locked.chmod(0o755)
    assert proc.returncode == 2 and "locked" in err and "Permission denied" in err, err
    _no_traceback(err, out)
