"""Discovery of every layout, and robust decoding of every bad-file kind."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from tests.data.conftest import png_bomb

from popevit.config import PreprocessConfig
from popevit.data import DecodeError, discover, load_image, parse_class_map
from popevit.data.dedup import fingerprint_files
from popevit.data.preprocess import preprocess_image


def test_phantom_layout_skips_masks_and_lists_metadata(phantom_root):
    d = discover(phantom_root)
    assert d.classes == ["glioma", "meningioma", "notumor", "pituitary"]
    assert d.counts() == dict.fromkeys(d.classes, 12)
    assert phantom_root / "metadata.csv" in d.ignored
    assert phantom_root / "masks" in d.skipped_dirs
    assert all(s.split is None for s in d.samples)


def test_clutter_ignored_and_listed(messy_root):
    d = discover(messy_root)
    names = {p.name for p in d.ignored}
    assert {".DS_Store", "Thumbs.db", "labels.txt", "metadata.csv"} <= names
    sample_names = {s.path.name for s in d.samples}
    assert {"empty.jpg", "truncated.jpg", "corrupt.png", "bomb.png", "png_named.jpg"} <= sample_names


def test_extensionless_image_found_by_content(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "a" / "scan001", format="PNG")
    d = discover(tmp_path)
    assert [s.path.name for s in d.samples] == ["scan001"] and d.ignored == []


def test_official_split_layout(phantom_root, tmp_path):
    for split, n in (("Training", 0), ("Testing", 1)):
        for c in ("glioma", "notumor"):
            (tmp_path / split / c).mkdir(parents=True)
            shutil.copy(phantom_root / c / f"{c}_000{n}.png", tmp_path / split / c)
    d = discover(tmp_path)
    assert d.layout == "official_split"
    assert {(s.split, s.label) for s in d.samples} == {(a, b) for a in ("train", "test") for b in ("glioma", "notumor")}


@pytest.mark.parametrize(
    ("folders", "match"),
    [
        (
            ["Training/glioma", "Testing/glioma", "extra"],
            r"mix split folders \['Testing', 'Training'\] with other folders \['extra'\]",
        ),
        (["Training/Glioma", "Testing/glioma"], r"classes \['Glioma', 'glioma'\] .* differ only in letter case"),
        (["Glioma", "glioma"], r"classes \['Glioma', 'glioma'\] .* differ only in letter case"),
    ],
    ids=["split-and-class-folders", "case-across-splits", "case-in-one-folder"],
)
def test_ambiguous_layouts_are_errors(tmp_path, folders, match):
    for f in folders:
        (tmp_path / f).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / f / "a.png")
    with pytest.raises(ValueError, match=match):
        discover(tmp_path)


def test_unreadable_subfolder_is_an_error_not_a_silent_gap(tmp_path, monkeypatch):
    (tmp_path / "glioma" / "series1").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "glioma" / "series1" / "a.png")
    Image.new("L", (8, 8)).save(tmp_path / "glioma" / "b.png")
    scandir = os.scandir

    def denied(path="."):  # a folder without read permission; chmod would not stop root
        if os.fspath(path).endswith("series1"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(ValueError, match=r"1 folder\(s\) .* cannot be listed .*series1'?: Permission denied"):
        discover(tmp_path)


def test_numeric_folders_class_map_binary_and_filters(phantom_root, tmp_path):
    for k, c in enumerate(("pituitary", "meningioma", "notumor")):
        shutil.copytree(phantom_root / c, tmp_path / str(k))
    cm = parse_class_map("0=pituitary,1=meningioma,2=notumor")
    d = discover(tmp_path, class_map=cm)
    assert d.classes == ["meningioma", "notumor", "pituitary"]
    assert discover(tmp_path).classes == ["0", "1", "2"]  # no map: folder names
    with pytest.raises(ValueError, match="not in the class map"):
        discover(tmp_path, class_map={"0": "pituitary"})
    b = discover(phantom_root, binary=True)
    assert b.classes == ["notumor", "tumor"] and b.counts() == {"notumor": 12, "tumor": 36}
    f = discover(phantom_root, classes=["glioma", "pituitary"])
    assert f.classes == ["glioma", "pituitary"] and len(f.samples) == 24
    with pytest.raises(ValueError, match="did you mean 'glioma'"):
        discover(phantom_root, classes=["gliomа", "giloma"][1:])
    with pytest.raises(ValueError, match="does not exist"):
        discover(tmp_path / "nope")
    with pytest.raises(ValueError, match="FOLDER=NAME"):
        parse_class_map("0:pituitary")


def test_bad_files_have_reasons(messy_root):
    expect = {
        "empty.jpg": "empty file",
        "truncated.jpg": "truncated or corrupt",
        "corrupt.png": "not a recognised image format",
        "bomb.png": "decompression bomb",
    }
    folder = {"empty.jpg": "notumor", "truncated.jpg": "notumor", "corrupt.png": "pituitary", "bomb.png": "pituitary"}
    for name, reason in expect.items():
        with pytest.raises(DecodeError, match=reason) as err:
            load_image(messy_root / folder[name] / name)
        assert err.value.path.name == name
    fps = fingerprint_files(sorted((messy_root / "notumor").iterdir()))
    bad = {fp.path.name: fp.error for fp in fps if not fp.ok}
    assert set(bad) == {"empty.jpg", "truncated.jpg"}
    mism = [fp.path.name for fp in fps if fp.format_mismatch]
    assert mism == ["png_named.jpg"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files regardless of permissions")
def test_permission_denied(tmp_path):
    p = tmp_path / "locked.png"
    Image.new("L", (8, 8)).save(p)
    p.chmod(0)
    with pytest.raises(DecodeError, match="permission denied"):
        load_image(p)


def test_bomb_limits(tmp_path):
    with pytest.raises(DecodeError, match="decompression bomb"):  # PIL's own hard limit
        load_image(png_bomb(tmp_path / "b.png"))
    with pytest.raises(DecodeError, match="9000x9000"):  # ours, below PIL's warning level, checked from the header
        load_image(png_bomb(tmp_path / "c.png", 9000, 9000))


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16", "LA"])
def test_every_mode_preprocesses(mode, tmp_path):
    rng = np.random.default_rng(0)
    base = np.zeros((40, 50), np.uint8)
    base[8:32, 10:40] = rng.integers(80, 255, (24, 30))
    img = Image.fromarray(base)
    if mode == "I;16":
        img = Image.fromarray(base.astype(np.uint16) * 257)
        assert img.mode == "I;16"
    elif mode != "L":
        img = img.convert(mode)
    img.save(tmp_path / "x.png")
    out = preprocess_image(load_image(tmp_path / "x.png"), PreprocessConfig(img_size=32))
    assert out.shape == (32, 32) and out.dtype == np.uint8 and out.max() == 255 and out.min() == 0


def test_exif_orientation_applied():
    img = Image.linear_gradient("L").resize((40, 20))  # not blank: blank images are refused as degenerate
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    from popevit.data.decode import decode_bytes

    assert decode_bytes(buf.getvalue()).size == (20, 40)
