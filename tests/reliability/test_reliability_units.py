"""Regression tests of the root causes behind the corpus, one level down: the atomic writer, exit codes, the
checkpoint writer on a full disk, CIFAR reading, name checks, manifest copies."""

from __future__ import annotations

import errno
import json
import os
import pickle
import stat
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from popevit.io import atomic_write, atomic_write_text, read_json, shown, write_json


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------------------------------------- the atomic writer


def test_a_failed_write_leaves_the_old_file_whole_and_no_temporary_file(tmp_path):
    target = tmp_path / "manifest.csv"
    target.write_text("good\n")

    def full_disk(tmp: Path) -> None:
        tmp.write_text("half a")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as err:
        atomic_write(target, full_disk)
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(target)  # named, for the error line
    assert target.read_text() == "good\n" and _leftovers(tmp_path) == []


def test_an_encoding_error_leaves_the_old_file_whole(tmp_path):
    target = tmp_path / "m.csv"
    target.write_text("good\n")
    with pytest.raises(UnicodeEncodeError):
        atomic_write(target, lambda tmp: tmp.write_text("caf\udcff", encoding="utf-8"))
    assert target.read_text() == "good\n" and _leftovers(tmp_path) == []


def test_names_that_are_not_utf8_are_written_as_their_bytes_and_read_back(tmp_path):
    from popevit.data.manifest import ManifestRow, read_manifest, write_manifest

    odd = Path(os.fsdecode(os.fsencode(tmp_path) + b"/scan_\xff.png"))
    rows = [
        ManifestRow(odd, "glioma", "train", "g1", "ab"),
        ManifestRow(tmp_path / "b.png", "glioma", "test", "g2", "cd"),
    ]
    write_manifest(rows, tmp_path / "m.csv")
    assert b"scan_\xff.png" in (tmp_path / "m.csv").read_bytes()
    assert read_manifest(tmp_path / "m.csv").rows[0].path == odd
    assert shown(odd).endswith("scan_\\xff.png")  # printable in messages


def test_a_rewritten_file_keeps_its_permissions_and_a_new_one_gets_the_umask(tmp_path):
    old = tmp_path / "shared.json"
    old.write_text("{}")
    old.chmod(0o640)
    atomic_write_text(old, "{}\n")
    assert stat.S_IMODE(old.stat().st_mode) == 0o640
    umask = os.umask(0o022)
    os.umask(umask)
    new = atomic_write_text(tmp_path / "new.json", "{}\n")
    assert stat.S_IMODE(new.stat().st_mode) == 0o666 & ~umask


def test_a_writer_that_checks_the_suffix_sees_it_and_json_is_strict(tmp_path):
    import numpy as np

    seen = []
    atomic_write(tmp_path / "model.pt2", lambda tmp: (seen.append(tmp.name), tmp.write_bytes(b"x")), keep_suffix=True)
    assert seen[0].endswith(".pt2") and (tmp_path / "model.pt2").read_bytes() == b"x"
    write_json(tmp_path / "r.json", {"a": float("nan"), 1: np.float32(0.5), "p": tmp_path, "l": (np.int64(2),)})
    assert json.loads((tmp_path / "r.json").read_text()) == {"a": None, "1": 0.5, "p": str(tmp_path), "l": [2]}


def test_a_path_through_a_file_is_named(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(NotADirectoryError) as err:
        atomic_write_text(tmp_path / "notes.txt" / "sub" / "m.csv", "x")
    assert err.value.filename == str(tmp_path / "notes.txt")


def test_read_json_names_the_damaged_file(tmp_path):
    (tmp_path / "run.json").write_text('{"wall_s": 1')
    with pytest.raises(ValueError, match=r"run\.json: run record is not valid JSON .*line 1"):
        read_json(tmp_path / "run.json", "run record")


# ---------------------------------------------------------------------------------------------- exit codes


def _app(exc: BaseException) -> typer.Typer:
    from popevit.cli.errors import ErrorHandlingGroup

    app = typer.Typer(cls=ErrorHandlingGroup)

    @app.command()
    def boom() -> None:
        raise exc

    @app.command()
    def other() -> None:  # two commands: a group, as popevit's
        pass

    return app


@pytest.mark.parametrize(
    ("exc", "code", "says"),
    [
        (ValueError("manifest 'm.csv' lacks columns"), 2, "error: manifest 'm.csv' lacks columns"),
        (FileNotFoundError(2, "No such file or directory", "x.yaml"), 2, "error: x.yaml: No such file or directory"),
        (PermissionError(13, "Permission denied", "/out"), 2, "error: /out: Permission denied"),
        (OSError(errno.ENOSPC, "No space left on device", "m.csv"), 1, "m.csv: No space left on device (free disk"),
        (RuntimeError("CUDA error: device-side assert"), 1, "error: CUDA error: device-side assert"),
        (KeyboardInterrupt(), 130, "interrupted (Ctrl-C)"),
        (TypeError("unsupported operand"), 1, "internal error (TypeError: unsupported operand); this is a bug"),
    ],
)
def test_every_exception_ends_in_one_line_and_its_exit_code(exc, code, says):
    res = CliRunner().invoke(_app(exc), ["boom"])
    assert res.exit_code == code and isinstance(res.exception, SystemExit), res.output
    assert says in res.stderr and "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1


def test_yaml_errors_are_input_errors():
    import yaml

    res = CliRunner().invoke(_app(yaml.YAMLError("mapping values are not allowed here")), ["boom"])
    assert res.exit_code == 2 and "mapping values" in res.stderr


@pytest.mark.parametrize("how", ["flag", "env"])
def test_debug_shows_the_traceback(how, monkeypatch):
    from popevit.cli.main import app

    args = ["evaluate", "/nonexistent/run"]
    if how == "flag":
        args = ["--debug", *args]
    else:
        monkeypatch.setenv("POPEVIT_DEBUG", "1")
    res = CliRunner().invoke(app, args)
    assert isinstance(res.exception, FileNotFoundError)  # re-raised: Python prints the traceback


# ---------------------------------------------------------------------------------------------- checkpoints


def test_a_full_disk_while_checkpointing_is_an_oserror_naming_the_checkpoint(tmp_path, monkeypatch):
    from popevit.training.checkpoint import AtomicCheckpointIO, CheckpointWriteError

    ckpt = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, ckpt)

    def torch_on_a_full_disk(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half")
        raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", torch_on_a_full_disk)
    with pytest.raises(CheckpointWriteError) as err:
        AtomicCheckpointIO().save_checkpoint({"epoch": 2}, ckpt)
    assert isinstance(err.value, OSError) and err.value.filename == str(ckpt)
    assert "previous checkpoint is intact" in str(err.value)
    monkeypatch.undo()
    assert torch.load(ckpt, weights_only=True) == {"epoch": 1} and _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------- CIFAR


class _Payload:
    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_cifar_batches_are_read_as_plain_data_and_code_is_refused(tmp_path):
    from popevit.data.cifar import read_batch, write_synthetic_cifar

    root = write_synthetic_cifar(tmp_path / "c", "cifar10", n_train=20, n_test=5)
    content, verified = read_batch(root / "cifar-10-batches-py" / "data_batch_1", "c99cafc152244af753f735de768cd75f")
    assert verified is False and content["data"].shape[1] == 3072  # not the published file: read, plain data only
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil"
    evil.write_bytes(pickle.dumps({"data": _Payload(marker)}))
    with pytest.raises(ValueError, match=r"evil: refused, not read: it names io.open"):
        read_batch(evil, "0" * 32)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- names and copies


@pytest.mark.parametrize(
    ("classes", "pairs"),
    [
        (["glioma", "gliomaa", "meningioma"], [("glioma", "gliomaa")]),
        (["notumor", "no_tumor"], [("no_tumor", "notumor")]),
        (["tumor", "notumor"], []),  # two letters apart, and real
        (["0", "1", "2"], []),  # short names are not compared
        (["glioma", "meningioma", "notumor", "pituitary"], []),
    ],
)
def test_near_miss_class_names(classes, pairs):
    from popevit.data.checks import near_miss_classes

    assert near_miss_classes(classes) == pairs


def test_a_manifest_with_relative_paths_stays_resolvable_in_the_run_folder(tmp_path):
    from popevit.data.manifest import read_manifest
    from popevit.training.rundir import copy_manifest

    images = tmp_path / "data" / "glioma"
    images.mkdir(parents=True)
    for i in range(2):
        (images / f"{i}.png").write_bytes(b"x")
    m = tmp_path / "lists" / "m.csv"
    m.parent.mkdir()
    m.write_text("path,label,split\n../data/glioma/0.png,glioma,train\n../data/glioma/1.png,glioma,val\n")
    assert all(r.path.is_file() for r in read_manifest(m).rows)  # relative to the manifest's own folder
    copy = copy_manifest(read_manifest(m), tmp_path / "run" / "manifest.csv")
    assert all(r.path.is_absolute() and r.path.is_file() for r in read_manifest(copy).rows)
    absolute = tmp_path / "abs.csv"
    absolute.write_text(f"path,label,split\n{images / '0.png'},glioma,train\n")
    assert copy_manifest(read_manifest(absolute), tmp_path / "run2.csv").read_bytes() == absolute.read_bytes()
