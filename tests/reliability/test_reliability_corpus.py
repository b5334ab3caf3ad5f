"""The bad-input corpus: every command, fed what a new user feeds it, ends in one clear line or a listed skip.

One parametrised test per family (broken image files, folder layouts, manifests, configs, damaged runs, misuse of
options, data that would run code). Every case asserts the exit code, no traceback, a message naming the file or
option, no user file changed (hashes before and after) and no half-made output left (:func:`conftest.check`).
Faults that need a real process (a full disk, signals, FIFOs) are in ``test_reliability_faults.py``.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from PIL import Image
from tests.reliability.conftest import SETS, Case, check, invoke, snapshot
from tests.reliability.corpus import (
    BAD_IMAGES,
    CLASSES,
    dicom_bytes,
    flip_bytes,
    make_socket,
    nifti_bytes,
    noise_image,
    non_utf8_name,
    png_bytes,
)

# A case builds its inputs in a Case and returns (command line, exit code, words stderr must contain), optionally
# with a check of what a successful command wrote.
Built = tuple[list, int, list[str]] | tuple[list, int, list[str], Callable[[], None]]


def _run(c: Case, built: Built, extra_roots: tuple[Path, ...] = ()) -> None:
    args, code, says, *post = built
    roots = (c.dir, c.base, *extra_roots, *((c.trained,) if c.trained else ()))
    before = snapshot(*roots)
    out = invoke(args)
    check(out, code, says, before, snapshot(*roots), may_write=lambda p: p.startswith(str(c.dir)))
    for f in post:
        f()


def _read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------ broken image files


def _bad_image(c: Case, kind: str) -> tuple[Path, str]:
    name, make, reason = BAD_IMAGES[kind]
    c.data()
    return c.file(f"data/glioma/{name}", make()), reason


def _split_lists_it(c: Case, kind: str) -> Built:
    bad, reason = _bad_image(c, kind)
    out = c.dir / "m.csv"

    def excluded() -> None:
        rows = {Path(r["path"]).name: r for r in _read_csv_rows(out)}
        if bad.name in rows:  # decoded and refused: an excluded row with the reason
            assert rows[bad.name]["split"] == "excluded" and reason in rows[bad.name]["note"]
        listed = {Path(r["path"]).name: r["reason"] for r in _read_csv_rows(c.dir / "m.skipped.csv")}
        assert reason in listed[bad.name]

    return ["data", "split", c.made["data"], "--out", out], 0, [bad.name], excluded


def _inspect_lists_it(c: Case, kind: str) -> Built:
    _bad_image(c, kind)
    return ["data", "inspect", c.made["data"]], 0, []  # reported on stdout: checked by the test


def _explain_refuses_it(c: Case, kind: str) -> Built:
    bad, reason = _bad_image(c, kind)
    return ["explain", c.run(), "--images", bad, "--out", c.dir / "ex"], 2, [bad.name, reason]


IMAGE_COMMANDS = {"split": _split_lists_it, "inspect": _inspect_lists_it, "explain": _explain_refuses_it}


@pytest.mark.parametrize("command", list(IMAGE_COMMANDS))
@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_broken_image_files(kind, command, run_case):
    """Every kind of broken image: split and inspect list it with the reason; explain refuses it by name."""
    built = IMAGE_COMMANDS[command](run_case, kind)
    if command == "inspect":
        name, _, reason = BAD_IMAGES[kind]
        before = snapshot(run_case.dir, run_case.base)
        out = invoke(built[0])
        check(out, 0, [], before, snapshot(run_case.dir, run_case.base))
        assert name in out.stdout and reason in out.stdout, out.stdout
        return
    _run(run_case, built)


# ------------------------------------------------------------------------------------------ folder layouts


def _layout_empty_class(c: Case) -> Built:
    (c.data() / "astrocytoma").mkdir()
    return ["data", "split", c.made["data"], "--out", c.dir / "m.csv"], 2, ["astrocytoma", "holds no images", "--keep"]


def _layout_empty_class_left_out(c: Case) -> Built:
    (c.data() / "astrocytoma").mkdir()
    return ["data", "split", c.made["data"], "--out", c.dir / "m.csv", "--keep", ",".join(CLASSES)], 0, []


def _layout_class_of_dicom_only(c: Case) -> Built:
    data = c.data()
    c.file("data/astrocytoma/slice1.dcm", dicom_bytes())
    return ["data", "split", data, "--out", c.dir / "m.csv"], 2, ["astrocytoma", "DICOM"]


def _layout_empty_class_inspect(c: Case) -> Built:
    (c.data() / "astrocytoma").mkdir()
    return ["data", "inspect", c.made["data"]], 2, ["astrocytoma", "holds no images"]


def _skipped_with(c: Case, name: str, words: list[str], content: bytes | None = None) -> Built:
    data = c.data()
    if content is not None:
        c.file(f"data/glioma/{name}", content)
    out = c.dir / "m.csv"

    def listed() -> None:
        assert name not in {Path(r["path"]).name for r in _read_csv_rows(out)}
        reasons = {Path(r["path"]).name: r["reason"] for r in _read_csv_rows(c.dir / "m.skipped.csv")}
        assert all(w in reasons[name] for w in words[1:]), reasons

    return ["data", "split", data, "--out", out], 0, [name, *words[1:]], listed


def _layout_dicom_file(c: Case) -> Built:
    return _skipped_with(c, "slice7.dcm", ["slice7.dcm", "DICOM", "popevit predict"], dicom_bytes())


def _layout_nifti_file(c: Case) -> Built:
    return _skipped_with(c, "brain.nii", ["brain.nii", "NIfTI"], nifti_bytes())


def _layout_nifti_gz_file(c: Case) -> Built:
    return _skipped_with(c, "brain.nii.gz", ["brain.nii.gz", "NIfTI"], gzip.compress(nifti_bytes()))


def _layout_jp2_file(c: Case) -> Built:
    buf = io.BytesIO()
    Image.fromarray(noise_image(9)).save(buf, format="JPEG2000")
    return _skipped_with(c, "slice.jp2", ["slice.jp2", "JPEG 2000"], buf.getvalue())


def _layout_image_at_root(c: Case) -> Built:
    data = c.data()
    c.file("data/loose.png", png_bytes(noise_image(10)))
    out = c.dir / "m.csv"
    return ["data", "split", data, "--out", out], 0, ["loose.png", "data root"]


def _layout_socket(c: Case) -> Built:
    make_socket(c.data() / "glioma" / "sock.png")
    return _skipped_with(c, "sock.png", ["sock.png", "not a regular file"])


def _layout_broken_link(c: Case) -> Built:
    (c.data() / "glioma" / "gone.png").symlink_to(c.dir / "nowhere.png")
    return _skipped_with(c, "gone.png", ["gone.png", "broken symbolic link"])


def _layout_link_loop(c: Case) -> Built:
    (c.data() / "glioma" / "again").symlink_to("..", target_is_directory=True)
    return _skipped_with(c, "again", ["again", "loop"])


def _layout_link_into_other_class(c: Case) -> Built:
    (c.data() / "notumor" / "men").symlink_to("../meningioma", target_is_directory=True)
    return _skipped_with(c, "men", ["men", "another folder of the data root"])


def _layout_linked_subfolder_is_read(c: Case) -> Built:
    extra = c.dir / "elsewhere"
    extra.mkdir(parents=True)
    for i in range(3):
        (extra / f"extra_{i}.png").write_bytes(png_bytes(noise_image(20 + i, 40)))
    (c.data() / "glioma" / "batch2").symlink_to(extra, target_is_directory=True)
    out = c.dir / "m.csv"

    def read() -> None:
        names = {Path(r["path"]).name: r for r in _read_csv_rows(out)}
        assert all(names[f"extra_{i}.png"]["label"] == "glioma" for i in range(3))

    return ["data", "split", c.made["data"], "--out", out], 0, [], read


def _layout_hidden_folder(c: Case) -> Built:
    c.data()
    c.file("data/glioma/.thumbnails/t.png", png_bytes(noise_image(11)))
    return _skipped_with(c, ".thumbnails", [".thumbnails", "hidden folder"])


def _layout_non_utf8_name(c: Case) -> Built:
    odd = non_utf8_name(c.data() / "glioma", png_bytes(noise_image(12, 40)))
    out = c.dir / "m.csv"

    def round_trip() -> None:
        from popevit.data.manifest import read_manifest

        assert odd in {r.path for r in read_manifest(out).rows}

    return ["data", "split", c.made["data"], "--out", out], 0, [], round_trip


def _layout_typo_class(c: Case) -> Built:
    c.data()
    c.file("data/gliomaa/scan.png", png_bytes(noise_image(13, 40)))
    return ["data", "split", c.made["data"], "--out", c.dir / "m.csv"], 0, ["'gliomaa'", "one letter", "fewer than"]


def _layout_no_class_folders(c: Case) -> Built:
    c.file("flat/a.png", png_bytes(noise_image(14)))
    return ["data", "split", c.dir / "flat", "--out", c.dir / "m.csv"], 2, ["no class folders", "flat"]


def _layout_empty_folder(c: Case) -> Built:
    (c.dir / "empty").mkdir(parents=True)
    return ["data", "split", c.dir / "empty", "--out", c.dir / "m.csv"], 2, ["no class folders", "empty"]


def _layout_no_images_at_all(c: Case) -> Built:
    for cls in CLASSES:
        c.file(f"texts/{cls}/readme.txt", "nothing here")
    return ["data", "split", c.dir / "texts", "--out", c.dir / "m.csv"], 2, ["holds no images", "texts"]


def _layout_every_image_unreadable(c: Case) -> Built:
    for cls in CLASSES:
        c.file(f"bad/{cls}/scan.png", b"<html>404</html>")
    return ["data", "split", c.dir / "bad", "--out", c.dir / "m.csv"], 2, ["no usable images", "bad"]


def _layout_data_is_a_file(c: Case) -> Built:
    f = c.file("data.zip", b"PK\x03\x04")
    return ["data", "split", f, "--out", c.dir / "m.csv"], 2, ["data.zip", "not a folder"]


def _layout_data_missing(c: Case) -> Built:
    return ["data", "split", c.dir / "nope", "--out", c.dir / "m.csv"], 2, ["nope"]


def _layout_split_and_class_folders_mixed(c: Case) -> Built:
    data = c.data()
    (data / "Training").mkdir()
    shutil.copytree(data / "glioma", data / "Training" / "glioma")
    return ["data", "split", data, "--out", c.dir / "m.csv"], 2, ["Training", "mix split folders"]


def _layout_letter_case_clash(c: Case) -> Built:
    data = c.data()
    shutil.copytree(data / "glioma", data / "Glioma")
    return ["data", "split", data, "--out", c.dir / "m.csv"], 2, ["Glioma", "letter case"]


def _layout_unmapped_numeric_folders(c: Case) -> Built:
    for i in range(2):
        c.file(f"num/{i}/a.png", png_bytes(noise_image(30 + i)))
    return (
        ["data", "split", c.dir / "num", "--out", c.dir / "m.csv", "--classes", "0=glioma"],
        2,
        ["['1']", "--classes"],
    )


def _layout_keep_unknown_class(c: Case) -> Built:
    return ["data", "split", c.data(), "--out", c.dir / "m.csv", "--keep", "glioma,astro"], 2, ["'astro'"]


def _layout_out_is_a_folder(c: Case) -> Built:
    (c.dir / "outdir").mkdir(parents=True)
    return ["data", "split", c.data(), "--out", c.dir / "outdir"], 2, ["outdir", "folder"]


def _layout_out_parent_is_a_file(c: Case) -> Built:
    f = c.file("notes.txt", "mine")
    return ["data", "split", c.data(), "--out", f / "m.csv"], 2, ["notes.txt"]


def _layout_failed_split_keeps_old_manifest(c: Case) -> Built:
    out = c.file("m.csv", "path,label,split\n/x.png,glioma,train\n")  # the user's good manifest stays as it is
    (c.data() / "astrocytoma").mkdir()
    return ["data", "split", c.made["data"], "--out", out], 2, ["astrocytoma"]


def _layout_audit_lists_skips(c: Case) -> Built:
    data = c.data()
    c.file("data/glioma/slice.dcm", dicom_bytes())
    return ["data", "audit", "--train", data, "--no-probe"], 0, ["slice.dcm", "DICOM"]


LAYOUTS = {name[len("_layout_") :]: fn for name, fn in dict(globals()).items() if name.startswith("_layout_")}


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_folder_layouts(name, case):
    """Layouts a user's data folder has: what is skipped is named with its reason, what cannot work is refused."""
    _run(case, LAYOUTS[name](case))


# ------------------------------------------------------------------------------------------ manifests

HEADER = "path,label,split,group,content_hash,width,height,mode,format,note\n"


def _good_manifest(c: Case) -> Path:
    """A valid manifest of the case's data copy (made with popevit data split)."""
    from popevit.data.manifest import make_split

    return make_split(c.data(), c.dir / "good.csv", near_threshold=None)


def _rows(c: Case) -> list[dict[str, str]]:
    return _read_csv_rows(_good_manifest(c))


def _write_rows(c: Case, name: str, rows: list[dict[str, str]], columns: list[str] | None = None) -> Path:
    columns = columns or (list(rows[0]) if rows else HEADER.strip().split(","))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return c.file(name, buf.getvalue().encode("utf-8", "surrogateescape"))


def _manifest_missing(c: Case) -> tuple[Path, list[str]]:
    return c.dir / "missing.csv", ["missing.csv"]


def _manifest_folder(c: Case) -> tuple[Path, list[str]]:
    (c.dir / "folder.csv").mkdir(parents=True)
    return c.dir / "folder.csv", ["folder.csv"]


def _manifest_empty(c: Case) -> tuple[Path, list[str]]:
    return c.file("empty.csv", b""), ["empty.csv", "lacks columns"]


def _manifest_no_split_column(c: Case) -> tuple[Path, list[str]]:
    rows = _rows(c)
    return _write_rows(c, "nosplit.csv", rows, ["path", "label"]), ["nosplit.csv", "'split'"]


def _manifest_unknown_split(c: Case) -> tuple[Path, list[str]]:
    rows = _rows(c)
    rows[0]["split"] = "training"
    return _write_rows(c, "badsplit.csv", rows), ["badsplit.csv:2", "'training'"]


def _manifest_path_twice(c: Case) -> tuple[Path, list[str]]:
    rows = _rows(c)
    return _write_rows(c, "twice.csv", [*rows, rows[0]]), ["twice.csv", "more than once"]


def _manifest_group_across_splits(c: Case) -> tuple[Path, list[str]]:
    rows = _rows(c)
    train_group = next(r["group"] for r in rows if r["split"] == "train")
    next(r for r in rows if r["split"] == "test")["group"] = train_group  # copies of one image in train and test
    return _write_rows(c, "leak.csv", rows), ["leak.csv", "more than one split"]


def _manifest_binary_garbage(c: Case) -> tuple[Path, list[str]]:
    return c.file("image.csv", png_bytes(noise_image(40))), ["image.csv", "lacks columns"]


def _manifest_width_not_a_number(c: Case) -> tuple[Path, list[str]]:
    rows = _rows(c)
    rows[3]["width"] = "wide"
    return _write_rows(c, "width.csv", rows), ["width.csv:5", "whole numbers"]


def _manifest_row_without_label(c: Case) -> tuple[Path, list[str]]:
    rows = _rows(c)
    rows[2]["label"] = ""
    return _write_rows(c, "nolabel.csv", rows), ["nolabel.csv:4", "lacks a path, label or split"]


MANIFEST_ERRORS = {n[len("_manifest_") :]: f for n, f in dict(globals()).items() if n.startswith("_manifest_")}


def _manifest_command(c: Case, command: str, m: Path) -> list:
    if command == "train":
        return ["train", "--manifest", m, "--out", c.dir / "newrun", *SETS]
    if command == "evaluate":
        return ["evaluate", c.run(), "--manifest", m, "--out", c.dir / "ev", "--n-boot", "10"]
    return ["data", "audit", "--train", m, "--no-probe"]


@pytest.mark.parametrize("command", ["train", "evaluate", "audit"])
@pytest.mark.parametrize("name", list(MANIFEST_ERRORS))
def test_broken_manifests(name, command, run_case):
    """A damaged or hand-edited manifest is refused in one line naming it (and the row), by every command."""
    m, says = MANIFEST_ERRORS[name](run_case)
    _run(run_case, (_manifest_command(run_case, command, m), 2, says))


def _split_rows(c: Case, change: Callable[[list[dict[str, str]]], list[dict[str, str]]], name: str) -> Path:
    return _write_rows(c, name, change(_rows(c)))


def _train_manifest_no_training_rows(c: Case) -> Built:
    m = _split_rows(c, lambda rows: [r for r in rows if r["split"] != "train"], "notrain.csv")
    return ["train", "--manifest", m, "--out", c.dir / "newrun", *SETS], 2, ["notrain.csv", "no training images"]


def _train_manifest_no_validation_rows(c: Case) -> Built:
    m = _split_rows(c, lambda rows: [r for r in rows if r["split"] != "val"], "noval.csv")
    return ["train", "--manifest", m, "--out", c.dir / "newrun", *SETS], 2, ["noval.csv", "no validation images"]


def _train_manifest_class_without_training_rows(c: Case) -> Built:
    m = _split_rows(c, lambda rows: [r for r in rows if not (r["label"] == "glioma" and r["split"] == "train")],
                    "nogliomatrain.csv")  # fmt: skip
    return ["train", "--manifest", m, "--out", c.dir / "newrun", *SETS], 2, ["nogliomatrain.csv", "['glioma']"]


def _train_manifest_relative_paths_that_miss(c: Case) -> Built:
    def relative(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        for r in rows:
            r["path"] = os.path.join("elsewhere", Path(r["path"]).name)
        return rows

    m = _split_rows(c, relative, "rel.csv")
    return ["train", "--manifest", m, "--out", c.dir / "newrun", *SETS], 2, ["rel.csv", "no usable training images"]


def _evaluate_manifest_relative_paths(c: Case) -> Built:
    def relative(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        for r in rows:
            r["path"] = os.path.relpath(r["path"], c.dir)
        return rows

    m = _split_rows(c, relative, "rel.csv")  # relative to the manifest's folder, as documented
    return ["evaluate", c.run(), "--manifest", m, "--out", c.dir / "ev", "--n-boot", "10"], 0, []


def _evaluate_manifest_missing_images(c: Case) -> Built:
    m = _good_manifest(c)
    test = next(r for r in _read_csv_rows(m) if r["split"] == "test")
    Path(test["path"]).unlink()
    return (
        ["evaluate", c.run(), "--manifest", m, "--out", c.dir / "ev", "--n-boot", "10"],
        0,
        [
            Path(test["path"]).name,
            "file not found",
        ],
    )


def _evaluate_manifest_typo_label(c: Case) -> Built:
    def typo(rows: list[dict[str, str]]) -> list[dict[str, str]]:
        next(r for r in rows if r["split"] == "test")["label"] = "gliomaa"
        return rows

    m = _split_rows(c, typo, "typo.csv")
    return ["evaluate", c.run(), "--manifest", m, "--out", c.dir / "ev"], 2, ["typo.csv", "'gliomaa'"]


def _evaluate_manifest_with_bom_and_crlf(c: Case) -> Built:
    text = _good_manifest(c).read_text().replace("\n", "\r\n")
    m = c.file("excel.csv", b"\xef\xbb\xbf" + text.encode())
    return ["evaluate", c.run(), "--manifest", m, "--out", c.dir / "ev", "--n-boot", "10"], 0, []


def _evaluate_manifest_non_utf8_path(c: Case) -> Built:
    from popevit.data.manifest import make_split

    odd = non_utf8_name(c.data() / "glioma", png_bytes(noise_image(41, 40)))
    m = make_split(c.made["data"], c.dir / "odd.csv", near_threshold=None, ratios=(0.0, 0.0, 1.0))
    return (
        ["evaluate", c.run(), "--manifest", m, "--out", c.dir / "ev", "--n-boot", "10"],
        0,
        [],
        lambda: _check_predicted(c.dir / "ev", odd),
    )


def _check_predicted(folder: Path, path: Path) -> None:
    from popevit.evaluation.predictions import Predictions

    assert str(path) in Predictions.load(folder / "predictions.csv").paths


MANIFEST_USES = {
    n[1:]: f for n, f in dict(globals()).items() if n.startswith(("_train_manifest_", "_evaluate_manifest_"))
}


# These evaluate a whole split (predictions, bootstrap, plots): seconds each on a busy machine.
SLOW_MANIFEST_USES = {
    "evaluate_manifest_relative_paths",
    "evaluate_manifest_missing_images",
    "evaluate_manifest_with_bom_and_crlf",
    "evaluate_manifest_non_utf8_path",
}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_MANIFEST_USES else n for n in MANIFEST_USES]
)
def test_manifest_contents(name, run_case):
    """Manifests that parse but cannot train (no training or validation rows, paths that miss), and ones that must
    work: relative paths, a BOM and CRLF line ends, a file name that is not UTF-8; missing images are listed."""
    _run(run_case, MANIFEST_USES[name](run_case))


# ------------------------------------------------------------------------------------------ configs


# name: (exp.yaml's text, words the error names: the file and line or key, or the bad value)
CONFIGS: dict[str, tuple[str | bytes, list[str]]] = {
    "duplicate_top_key": ("optim:\n  lr: 0.001\nmodel:\n  name: vit_tiny\noptim:\n  weight_decay: 0.1\n",
                          ["exp.yaml", "'optim' appears twice", "line 5"]),
    "duplicate_nested_key": ("optim:\n  lr: 0.001\n  lr: 0.1\n", ["exp.yaml", "'lr' appears twice", "line 3"]),
    "unclosed_bracket": ("data:\n  classes: [glioma, notumor\n", ["exp.yaml", "not valid YAML"]),
    "tab_indent": ("model:\n\tname: vit_tiny\n", ["exp.yaml", "not valid YAML", "line 2"]),
    "unknown_key": ("optim:\n  lrr: 0.001\n", ["exp.yaml", "'optim.lrr'", "did you mean 'lr'"]),
    "unknown_section": ("optimiser:\n  lr: 0.001\n", ["exp.yaml", "'optimiser'", "did you mean 'optim'"]),
    "wrong_type": ("optim:\n  lr: fast\n", ["exp.yaml", "optim.lr"]),
    "negative_lr": ("optim:\n  lr: -1\n", ["exp.yaml", "optim.lr", "greater than 0"]),
    "ratios_not_summing": ("data:\n  ratios: [0.5, 0.5, 0.5]\n", ["exp.yaml", "data.ratios must sum to 1"]),
    "not_a_mapping": ("- model\n- optim\n", ["exp.yaml", "must be a YAML mapping"]),
    "not_utf8": (b"name: \xff\xfe\n", ["exp.yaml", "not UTF-8"]),
    "unknown_model": ("model:\n  name: vit_tinyy\n  pos_enc: pope\n", ["'vit_tinyy'", "did you mean 'vit_tiny'"]),
    "unknown_pos_enc": ("model:\n  name: vit_tiny\n  pos_enc: rope-axial\n", ["'rope-axial'", "did you mean"]),
    "bad_devices": ("train:\n  devices: 0\n", ["exp.yaml", "train.devices"]),
    "negative_seed": ("train:\n  seed: -3\n", ["exp.yaml", "train.seed"]),
}  # fmt: skip


@pytest.mark.parametrize("name", list(CONFIGS))
def test_broken_configs(name, case):
    """A config that is not valid YAML, repeats a key, names an unknown key or holds a bad value: one line naming
    the file (and line or key) or the bad value, and no run folder."""
    text, says = CONFIGS[name]
    cfg = case.file("exp.yaml", text)
    _run(case, (["train", "--config", cfg, "--data", case.data(), "--out", case.dir / "newrun"], 2, says))


def _config_missing(c: Case) -> Built:
    return ["train", "--config", c.dir / "nope.yaml", "--data", c.data(), "--out", c.dir / "r"], 2, ["nope.yaml"]


def _config_is_a_folder(c: Case) -> Built:
    (c.dir / "cfg.yaml").mkdir(parents=True)
    return ["train", "--config", c.dir / "cfg.yaml", "--data", c.data(), "--out", c.dir / "r"], 2, ["cfg.yaml"]


def _config_set_without_value(c: Case) -> Built:
    return ["train", "--data", c.data(), "--out", c.dir / "r", "--set", "optim.lr"], 2, ["'optim.lr'", "key=value"]


def _config_set_into_a_value(c: Case) -> Built:
    args = ["train", "--data", c.data(), "--out", c.dir / "r", "--set", "model=3", "--set", "model.name=x"]
    return args, 2, ["'model.name=x'", "not a section"]


def _config_set_unknown_key(c: Case) -> Built:
    return ["train", "--data", c.data(), "--out", c.dir / "r", "--set", "train.epochs=3"], 2, ["'train.epochs'"]


CONFIG_USES = {n[1:]: f for n, f in dict(globals()).items() if n.startswith("_config_")}


@pytest.mark.parametrize("name", list(CONFIG_USES))
def test_config_options(name, case):
    _run(case, CONFIG_USES[name](case))


# ------------------------------------------------------------------------------------------ damaged run folders


def _meta(c: Case, change: Callable[[dict], object]) -> Path:
    """The case's run with its model.json changed in place by ``change``."""
    import json

    run = c.run()
    d = json.loads((run / "model.json").read_text())
    change(d)
    (run / "model.json").write_text(json.dumps(d))
    return run


def _damage_model_json_missing(c: Case) -> tuple[Path, list[str]]:
    (c.run() / "model.json").unlink()
    return c.made["run"], ["model.json", "not a finished popevit run"]


def _damage_model_json_truncated(c: Case) -> tuple[Path, list[str]]:
    m = c.run() / "model.json"
    m.write_bytes(m.read_bytes()[:40])
    return c.made["run"], ["model.json", "not valid JSON"]


def _damage_model_json_binary(c: Case) -> tuple[Path, list[str]]:
    (c.run() / "model.json").write_bytes(b"\xff\xfe\x00garbage")
    return c.made["run"], ["model.json", "not UTF-8"]


def _damage_model_json_other_format(c: Case) -> tuple[Path, list[str]]:
    return _meta(c, lambda d: d.update(format="other/9")), ["model.json", "format"]


def _damage_model_json_a_list(c: Case) -> tuple[Path, list[str]]:
    (c.run() / "model.json").write_text("[1, 2]")
    return c.made["run"], ["model.json", "format"]


def _damage_model_json_without_classes(c: Case) -> tuple[Path, list[str]]:
    return _meta(c, lambda d: d.pop("classes")), ["model.json", "lacks 'classes'"]


def _damage_model_json_bad_preprocess(c: Case) -> tuple[Path, list[str]]:
    return _meta(c, lambda d: d["preprocess"].update(img_size="big")), ["model.json", "malformed"]


def _damage_model_json_unknown_model(c: Case) -> tuple[Path, list[str]]:
    return _meta(c, lambda d: d["model"].update(name="vit_gigantic")), ["'vit_gigantic'"]


def _damage_model_json_foreign_kwargs(c: Case) -> tuple[Path, list[str]]:
    return _meta(c, lambda d: d["model"]["kwargs"].update(wings=2)), ["model.json", "cannot be built"]


def _damage_weights_missing(c: Case) -> tuple[Path, list[str]]:
    (c.run() / "model.safetensors").unlink()
    return c.made["run"], ["model.safetensors", "not found"]


def _damage_weights_flipped_bytes(c: Case) -> tuple[Path, list[str]]:
    flip_bytes(c.run() / "model.safetensors")
    return c.made["run"], ["model.safetensors", "SHA-256 differs"]


def _damage_weights_truncated(c: Case) -> tuple[Path, list[str]]:
    w = c.run() / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    return c.made["run"], ["model.safetensors", "SHA-256 differs"]


def _damage_weights_truncated_old_meta(c: Case) -> tuple[Path, list[str]]:
    run = _meta(c, lambda d: d.pop("weights_sha256"))  # written before popevit recorded it
    w = run / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    return run, ["model.safetensors", "not a readable safetensors file"]


def _damage_weights_replaced_by_text_old_meta(c: Case) -> tuple[Path, list[str]]:
    run = _meta(c, lambda d: d.pop("weights_sha256"))
    (run / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\n")
    return run, ["model.safetensors", "not a readable safetensors file"]


def _damage_run_missing(c: Case) -> tuple[Path, list[str]]:
    return c.dir / "norun", ["norun", "not found"]


def _damage_run_is_a_file(c: Case) -> tuple[Path, list[str]]:
    return c.file("run.txt", "hello"), ["run.txt"]


DAMAGE = {n[len("_damage_") :]: f for n, f in dict(globals()).items() if n.startswith("_damage_")}


@pytest.mark.parametrize("command", ["evaluate", "explain"])
@pytest.mark.parametrize("name", list(DAMAGE))
def test_damaged_runs(name, command, run_case):
    """A run folder whose model.json or weights are missing, damaged or swapped: one line naming the file."""
    run, says = DAMAGE[name](run_case)
    if command == "evaluate":
        args = ["evaluate", run, "--data", run_case.data(), "--out", run_case.dir / "ev", "--n-boot", "10"]
    else:
        img = next((run_case.data() / "glioma").iterdir())
        args = ["explain", run, "--images", img, "--out", run_case.dir / "ex"]
    _run(run_case, (args, 2, says))


def test_old_model_json_without_a_checksum_still_loads(run_case):
    from popevit.artifact import load_artifact

    run = _meta(run_case, lambda d: d.pop("weights_sha256"))  # written before popevit recorded it
    model, meta = load_artifact(run)
    assert meta.weights_sha256 is None and model(torch.zeros(1, 1, 32, 32)).shape == (1, 4)


def _rundir_resume_finished(c: Case) -> Built:
    run = c.run()
    args = ["train", "--out", run, "--resume"]
    return args, 2, ["is finished", "nothing was changed"]


def _rundir_resume_damaged_checkpoint(c: Case) -> Built:
    run = c.run()
    (run / "run.json").unlink()  # as if killed after its last checkpoint
    ckpt = run / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    return ["train", "--out", run, "--resume"], 2, ["last.ckpt", "damaged"]


def _rundir_resume_changed_config(c: Case) -> Built:
    run = c.run()
    (run / "run.json").unlink()
    return ["train", "--out", run, "--resume", "--set", "optim.lr=0.5"], 2, ["config differs", "lr: 0.5"]


def _rundir_resume_nothing(c: Case) -> Built:
    (c.dir / "empty").mkdir(parents=True)
    return ["train", "--out", c.dir / "empty", "--resume", "--data", c.data()], 2, ["holds no popevit run"]


def _rundir_new_run_over_a_run(c: Case) -> Built:
    return ["train", "--data", c.data(), "--out", c.run(), *SETS], 2, ["already holds a run", "--resume"]


def _rundir_out_not_empty(c: Case) -> Built:
    c.file("mine/manifest.csv", "my own manifest\n")
    c.file("mine/notes.txt", "do not touch")
    return ["train", "--data", c.data(), "--out", c.dir / "mine", *SETS], 2, ["not empty", "manifest.csv", "mine/run"]


def _rundir_out_is_a_file(c: Case) -> Built:
    f = c.file("out.txt", "mine")
    return ["train", "--data", c.data(), "--out", f, *SETS], 2, ["out.txt", "is a file"]


def _rundir_report_missing_run(c: Case) -> Built:
    return ["report", c.dir / "norun", "--out", c.dir / "r.html"], 2, ["norun"]


def _rundir_report_damaged_metrics(c: Case) -> Built:
    run = c.run()
    ev = run / "eval" / "test"
    ev.mkdir(parents=True)
    (ev / "metrics.json").write_text("{ truncated")
    return ["report", run, "--out", c.dir / "r.html", "--no-compare"], 2, ["metrics.json", "not valid JSON"]


def _rundir_archive_unevaluated(c: Case) -> Built:
    return ["archive", c.run(), "--out", c.dir / "arch"], 2, ["run"]


def _rundir_compare_damaged_predictions(c: Case) -> Built:
    a, b = c.run("a-s0"), c.run("b-s0")
    for run in (a, b):
        assert invoke(["evaluate", run, "--n-boot", "10"]).code == 0
    (b / "eval" / "test" / "predictions.csv").write_text("path,label\nx,y\n")
    return ["compare", a, b, "--out", c.dir / "cmp", "--n-boot", "10"], 2, ["predictions.csv"]


RUNDIRS = {n[len("_rundir_") :]: f for n, f in dict(globals()).items() if n.startswith("_rundir_")}
SLOW_RUNDIRS = {"compare_damaged_predictions"}  # evaluates two runs first


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_RUNDIRS else n for n in RUNDIRS])
def test_run_folders(name, run_case):
    """--out and --resume misuse and damaged run records: refused in one line, nothing changed."""
    built = RUNDIRS[name](run_case)
    if name == "compare_damaged_predictions":  # the evaluations it made first are inputs
        args, code, says = built
        before = snapshot(run_case.dir)
        out = invoke(args)
        check(out, code, says, before, snapshot(run_case.dir))
        return
    _run(run_case, built)


# ------------------------------------------------------------------------------------------ options


def _option_devices_zero(c: Case) -> Built:
    return ["train", "--data", c.data(), "--out", c.dir / "r", "--devices", "0"], 2, ["train.devices"]


def _option_devices_word(c: Case) -> Built:
    return ["train", "--data", c.data(), "--out", c.dir / "r", "--devices", "many"], 2, ["train.devices"]


def _option_seed_negative(c: Case) -> Built:
    return ["train", "--data", c.data(), "--out", c.dir / "r", "--seed", "-1"], 2, ["train.seed"]


def _option_dataset_unknown(c: Case) -> Built:
    return ["train", "--data", c.data(), "--out", c.dir / "r", "--dataset", "mnist"], 2, ["data.dataset"]


def _option_strategy_unknown(c: Case) -> Built:
    return ["train", "--data", c.data(), "--out", c.dir / "r", "--strategy", "fsdp9", *SETS], 2, ["train.strategy"]


def _option_accelerator_without_gpu(c: Case) -> Built:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = ["train", "--data", c.data(), "--out", c.dir / "r", *SETS, "--set", "train.accelerator=gpu"]
    return args, 2, ["train.accelerator=gpu", "CUDA available: False"]


def _option_train_data_missing(c: Case) -> Built:
    return ["train", "--data", c.dir / "nodata", "--out", c.dir / "r", *SETS], 2, ["nodata"]


def _option_train_no_data(c: Case) -> Built:
    return ["train", "--out", c.dir / "r", *SETS], 2, ["--data", "--manifest"]


def _option_init_missing(c: Case) -> Built:
    return (
        ["train", "--data", c.data(), "--out", c.dir / "r", "--init", c.dir / "w.safetensors", *SETS],
        2,
        [
            "--init",
            "w.safetensors",
        ],
    )


def _option_init_not_safetensors(c: Case) -> Built:
    w = c.file("w.safetensors", b"\x00" * 64)
    return ["train", "--data", c.data(), "--out", c.dir / "r", "--init", w, *SETS], 2, ["w.safetensors"]


def _option_evaluate_device_cuda(c: Case) -> Built:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    return ["evaluate", c.run(), "--device", "cuda", "--out", c.dir / "ev"], 2, ["--device 'cuda'"]


def _option_evaluate_device_unknown(c: Case) -> Built:
    return ["evaluate", c.run(), "--device", "tpu9", "--out", c.dir / "ev"], 2, ["--device 'tpu9'"]


def _option_evaluate_img_size_not_patch_multiple(c: Case) -> Built:
    return ["evaluate", c.run(), "--img-size", "37", "--out", c.dir / "ev"], 2, ["--img-size 37"]


def _option_evaluate_unknown_split(c: Case) -> Built:
    return ["evaluate", c.run(), "--split", "tset", "--out", c.dir / "ev"], 2, ["'tset'", "did you mean 'test'"]


def _option_evaluate_data_and_manifest(c: Case) -> Built:
    m = c.run() / "manifest.csv"
    return ["evaluate", c.run(), "--data", c.data(), "--manifest", m, "--out", c.dir / "ev"], 2, ["either"]


def _option_evaluate_data_other_classes(c: Case) -> Built:
    data = c.data()
    shutil.rmtree(data / "pituitary")
    # a subset of the model's classes is scored as it is (cross-dataset evaluation), with a warning naming them
    return ["evaluate", c.run(), "--data", data, "--out", c.dir / "ev", "--n-boot", "10"], 0, ["pituitary", str(data)]


def _option_evaluate_n_boot_zero(c: Case) -> Built:
    return ["evaluate", c.run(), "--n-boot", "0"], 2, ["--n-boot"]


def _option_explain_unknown_method(c: Case) -> Built:
    return ["explain", c.run(), "--method", "saliency", "--out", c.dir / "ex"], 2, ["'saliency'"]


def _option_explain_unknown_target(c: Case) -> Built:
    return ["explain", c.run(), "--target", "tumour", "--out", c.dir / "ex"], 2, ["'tumour'"]


def _option_explain_no_images(c: Case) -> Built:
    (c.dir / "imgs").mkdir(parents=True)
    return ["explain", c.run(), "--images", c.dir / "imgs", "--out", c.dir / "ex"], 2, ["no images", "imgs"]


def _option_bench_unknown_pe(c: Case) -> Built:
    return ["bench", "--quick", "--pe", "bogus"], 2, ["'bogus'"]


def _option_bench_unknown_size(c: Case) -> Built:
    return ["bench", "--sizes", "huge"], 2, ["'huge'"]


def _option_bench_cuda_without_gpu(c: Case) -> Built:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    return ["bench", "--quick", "--device", "cuda"], 2, ["--device cuda"]


def _option_split_two_ratios(c: Case) -> Built:
    return ["data", "split", c.data(), "--out", c.dir / "m.csv", "--ratios", "0.5,0.5"], 2, ["ratios"]


def _option_split_ratios_words(c: Case) -> Built:
    return ["data", "split", c.data(), "--out", c.dir / "m.csv", "--ratios", "a,b,c"], 2, ["--ratios"]


def _option_split_class_map_without_equals(c: Case) -> Built:
    return ["data", "split", c.data(), "--out", c.dir / "m.csv", "--classes", "0pituitary"], 2, ["'0pituitary'"]


def _option_inspect_class_map_empty_name(c: Case) -> Built:
    return ["data", "inspect", c.data(), "--classes", "0="], 2, ["'0='"]


def _option_study_sizes_words(c: Case) -> Built:
    return ["study", c.run("a-s0"), c.run("b-s0"), "--sizes", "big", "--out", c.dir / "st"], 2, ["--sizes"]


def _option_compare_one_group(c: Case) -> Built:
    return ["compare", c.run("a-s0"), c.run("a-s1"), "--out", c.dir / "cmp"], 2, ["RUNS", "one group"]


def _option_synth_into_user_folder(c: Case) -> Built:
    c.file("photos/holiday.jpg", png_bytes(noise_image(50)))
    return ["data", "synth", c.dir / "photos", "--per-class", "2"], 2, ["photos", "holiday.jpg"]


def _option_synth_zero_per_class(c: Case) -> Built:
    return ["data", "synth", c.dir / "ph", "--per-class", "0"], 2, ["per_class"]


def _option_download_unknown_dataset(c: Case) -> Built:
    return ["data", "download", "kaggle-brain-tumour", "--out", c.dir / "dl"], 2, ["'kaggle-brain-tumour'"]


def _option_models_unknown_preset(c: Case) -> Built:
    return ["models", "--preset", "vit_huge"], 2, ["--preset"]


def _option_unknown_command(c: Case) -> Built:
    return ["trian"], 2, ["trian"]


OPTIONS = {n[len("_option_") :]: f for n, f in dict(globals()).items() if n.startswith("_option_")}


@pytest.mark.parametrize("name", list(OPTIONS))
def test_options(name, run_case):
    """Misused options: one line naming the option and the fix, exit 2, nothing written."""
    _run(run_case, OPTIONS[name](run_case))


# ------------------------------------------------------------------------------------------ code from data


class _Marker:
    """Pickled, it runs ``open(path, "w")`` when unpickled: proof that a loader executed code from data."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _code_cifar_batch(c: Case, marker: Path) -> Built:
    from popevit.data.cifar import write_synthetic_cifar

    root = write_synthetic_cifar(c.dir / "cifar", "cifar10", n_train=50, n_test=10)
    with open(root / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({"data": _Marker(marker), "labels": [0]}, f)
    args = ["train", "--dataset", "cifar10", "--data", root, "--out", c.dir / "r", *SETS]
    return args, 2, ["data_batch_1", "refused"]


def _code_cifar_meta(c: Case, marker: Path) -> Built:
    from popevit.data.cifar import write_synthetic_cifar

    root = write_synthetic_cifar(c.dir / "cifar", "cifar10", n_train=50, n_test=10)
    with open(root / "cifar-10-batches-py" / "batches.meta", "wb") as f:
        pickle.dump({"label_names": _Marker(marker)}, f)
    args = ["train", "--dataset", "cifar10", "--data", root, "--out", c.dir / "r", *SETS]
    return args, 2, ["batches.meta", "refused"]


def _code_yaml_python_tag(c: Case, marker: Path) -> Built:
    cfg = c.file("exp.yaml", f"name: !!python/object/apply:builtins.open ['{marker}', 'w']\n")
    return ["train", "--config", cfg, "--data", c.data(), "--out", c.dir / "r"], 2, ["exp.yaml", "not valid YAML"]


def _code_pretrained_pth(c: Case, marker: Path) -> Built:
    weights = c.dir / "resnet.pth"
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"fc.weight": _Marker(marker)}, weights)
    args = ["train", "--data", c.data(), "--out", c.dir / "r", *SETS, "--set", "model.name=resnet18",
            "--set", f"model.pretrained={weights}"]  # fmt: skip
    return args, 2, ["resnet.pth"]


def _code_init_pickle(c: Case, marker: Path) -> Built:
    weights = c.dir / "w.safetensors"
    weights.parent.mkdir(parents=True, exist_ok=True)
    with open(weights, "wb") as f:
        pickle.dump(_Marker(marker), f)
    return ["train", "--data", c.data(), "--out", c.dir / "r", "--init", weights, *SETS], 2, ["w.safetensors"]


CODE = {n[len("_code_") :]: f for n, f in dict(globals()).items() if n.startswith("_code_")}


@pytest.mark.parametrize("name", list(CODE))
def test_data_never_runs_code(name, case, tmp_path):
    """Pickles planted in a CIFAR folder, in weights, and a YAML tag: refused, and the code they carry never runs."""
    marker = tmp_path / "PWNED"
    _run(case, CODE[name](case, marker))
    assert not marker.exists(), "code from data ran"


def test_the_marker_pickle_does_run_code_when_unpickled_naively(tmp_path):
    """The corpus's payload is real: plain pickle.load runs it (so the refusals above are what stop it)."""
    marker = tmp_path / "PWNED"
    pickle.loads(pickle.dumps(_Marker(marker))).close()
    assert marker.exists()


# ------------------------------------------------------------------------------------------ corpus size

DEFAULT_CASES = (
    len(BAD_IMAGES) * len(IMAGE_COMMANDS)
    + len(LAYOUTS)
    + 3 * len(MANIFEST_ERRORS)
    + len(MANIFEST_USES)
    - len(SLOW_MANIFEST_USES)
    + len(CONFIGS)
    + len(CONFIG_USES)
    + 2 * len(DAMAGE)
    + len(RUNDIRS)
    - len(SLOW_RUNDIRS)
    + len(OPTIONS)
    + len(CODE)
)


def test_the_default_corpus_has_at_least_150_cases():
    assert DEFAULT_CASES >= 150, DEFAULT_CASES


@pytest.mark.slow
@pytest.mark.parametrize("command", ["evaluate", "train"])
@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_broken_image_files_in_training_and_evaluation(kind, command, run_case):
    """The same broken files inside a data folder that is evaluated, or trained on for one step: listed by name
    with the reason, on stderr and in the skipped.csv of the output, and the rest of the folder used."""
    bad, reason = _bad_image(run_case, kind)
    data = run_case.made["data"]
    out = run_case.dir / "out"
    if command == "evaluate":
        args = ["evaluate", run_case.run(), "--data", data, "--out", out, "--n-boot", "10"]
    else:
        args = ["train", "--data", data, "--out", out, *SETS]

    def listed() -> None:
        rows = {Path(r["path"]).name: r["reason"] for r in _read_csv_rows(out / "skipped.csv")}
        assert reason in rows[bad.name], rows

    _run(run_case, (args, 0, [bad.name], listed))
