"""Duplicate-grouped, stratified, deterministic splits; manifests; load_samples."""

from __future__ import annotations

import shutil
from collections import defaultdict

import imagehash
import pytest

from popevit.data import dedup, load_samples, make_split, read_manifest
from popevit.data.manifest import EXCLUDED


def _groups_by_split(man):
    where = defaultdict(set)
    for r in man.rows:
        if r.split != EXCLUDED:
            where[r.group].add(r.split)
    return where


def test_split_groups_duplicates_and_lists_bad_files(messy_root, tmp_path):
    out = make_split(messy_root, tmp_path / "m.csv", seed=0, cache_dir=tmp_path / "cache")
    man = read_manifest(out)
    by_name = {r.path.name: r for r in man.rows}
    # exact and near copies share the group of their original, whichever split it landed in
    assert by_name["copy_of_0000.png"].group == by_name["glioma_0000.png"].group
    assert by_name["dup_0001.png"].group == by_name["meningioma_0001.png"].group
    assert by_name["glioma_0002_small.jpg"].group == by_name["glioma_0002.png"].group
    assert by_name["conflict_0003.jpg"].group == by_name["notumor_0003.png"].group
    assert all(len(s) == 1 for s in _groups_by_split(man).values())
    # bad files are listed with reasons, never silently dropped
    excluded = {r.path.name: r.note for r in man.select(EXCLUDED)}
    assert set(excluded) == {"empty.jpg", "truncated.jpg", "corrupt.png", "bomb.png"}
    assert "decompression bomb" in excluded["bomb.png"]
    assert by_name["png_named.jpg"].format == "PNG"
    # every class in every split, roughly at the ratios
    counts = man.counts()
    assert all(counts[s][c] >= 1 for s in ("train", "val", "test") for c in man.classes)
    assert sum(counts["train"].values()) > 3 * sum(counts["test"].values())


def test_split_is_deterministic_and_seeded(phantom_root, tmp_path):
    a = make_split(phantom_root, tmp_path / "a.csv", seed=1)
    b = make_split(phantom_root, tmp_path / "b.csv", seed=1)
    c = make_split(phantom_root, tmp_path / "c.csv", seed=2)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    man = read_manifest(a)
    assert man.sha256 == read_manifest(b).sha256
    assert {"path", "label", "split", "group", "content_hash"} <= set(a.read_text().splitlines()[0].split(","))
    assert all(r.path.is_absolute() for r in man.rows)


@pytest.mark.parametrize(
    ("module", "name", "value"),
    [(dedup, "PREPROCESS_VERSION", 99), (imagehash, "__version__", "0.0"), (dedup, "FINGERPRINT_VERSION", 99)],
    ids=["preprocess-version", "imagehash-version", "fingerprint-version"],
)
def test_fingerprint_cache_is_keyed_by_what_fingerprints_depend_on(phantom_root, tmp_path, monkeypatch, module, name,
                                                                   value):  # fmt: skip
    paths = sorted((phantom_root / "glioma").glob("*.png"))[:2]
    first = dedup.fingerprint_files(paths, cache_dir=tmp_path, workers=1)
    computed, real = [], dedup._fingerprint_bytes

    def counting(path, data, digest):
        computed.append(path)
        return real(path, data, digest)

    monkeypatch.setattr(dedup, "_fingerprint_bytes", counting)
    assert dedup.fingerprint_files(paths, cache_dir=tmp_path, workers=1) == first and computed == []  # cache hit
    monkeypatch.setattr(module, name, value)
    assert dedup.fingerprint_files(paths, cache_dir=tmp_path, workers=1) == first and computed == paths  # new key


def test_unwritable_fingerprint_cache_warns_once_and_fingerprints_anyway(phantom_root, tmp_path):
    (tmp_path / "fingerprints").write_text("a file where the cache folder should be")  # fails for root too
    paths = sorted((phantom_root / "glioma").glob("*.png"))[:3]
    with pytest.warns(UserWarning, match="cannot write the fingerprint cache") as caught:
        fps = dedup.fingerprint_files(paths, cache_dir=tmp_path, workers=1)
    assert len(caught) == 1 and fps == dedup.fingerprint_files(paths, workers=1) and all(fp.ok for fp in fps)


def test_official_layout_keeps_test_and_excludes_leaks(phantom_root, tmp_path):
    root = tmp_path / "d"
    for c in ("glioma", "notumor"):
        (root / "Training" / c).mkdir(parents=True)
        (root / "Testing" / c).mkdir(parents=True)
        for i in range(10):
            shutil.copy(phantom_root / c / f"{c}_{i:04d}.png", root / "Training" / c)
        for i in range(10, 12):
            shutil.copy(phantom_root / c / f"{c}_{i:04d}.png", root / "Testing" / c)
    shutil.copy(phantom_root / "glioma" / "glioma_0011.png", root / "Training" / "glioma" / "leak.png")
    man = read_manifest(make_split(root, tmp_path / "m.csv", ratios=(0.8, 0.1, 0.1)))
    assert {r.path.name for r in man.select("test")} == {
        f"{c}_{i:04d}.png" for c in ("glioma", "notumor") for i in (10, 11)
    }
    leak = next(r for r in man.rows if r.path.name == "leak.png")
    assert leak.split == EXCLUDED and "official test" in leak.note
    assert len(man.select("val")) >= 2 and len(man.select("train")) >= 14


def test_read_manifest_errors(tmp_path):
    with pytest.raises(ValueError, match="popevit data split"):
        read_manifest(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nx.png,a\n")
    with pytest.raises(ValueError, match="lacks columns"):
        read_manifest(bad)
    rel = tmp_path / "rel.csv"
    rel.write_text("path,label,split\nimgs/x.png,a,train\n")
    man = read_manifest(rel)
    assert man.rows[0].path == tmp_path / "imgs" / "x.png"
    with pytest.raises(ValueError, match="did you mean 'train'"):
        man.select("trian")


def test_manifest_is_utf8_and_a_bom_is_ignored(tmp_path):
    bom = tmp_path / "excel.csv"
    bom.write_bytes("path,label,split\nimgs/tumör.png,glioma,train\n".encode("utf-8-sig"))  # Excel's "CSV UTF-8"
    row = read_manifest(bom).rows[0]
    assert row.path == tmp_path / "imgs" / "tumör.png" and row.label == "glioma"


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("a.png,x,train,g1\nb.png,x,test,g1\n", r"group 'g1' in \['train', 'test'\]"),
        ("a.png,x,train,g1\nb.png,x,val,g2\na.png,x,train,g1\n", r"lists 1 path\(s\) more than once"),
    ],
    ids=["group-spans-splits", "path-twice"],
)
def test_read_manifest_refuses_leaking_rows(tmp_path, body, match):
    bad = tmp_path / "m.csv"
    bad.write_text("path,label,split,group\n" + body)
    with pytest.raises(ValueError, match=match):
        read_manifest(bad)


def test_load_samples_folder_and_manifest(messy_root, phantom_root, tmp_path):
    s = load_samples(data=messy_root)
    undecodable = {"empty.jpg", "truncated.jpg", "corrupt.png", "bomb.png"}
    clutter = {".DS_Store", "Thumbs.db", "labels.txt", "metadata.csv", "masks"}  # listed by discovery, with reasons
    assert {p.name for p, _ in s.skipped} == undecodable | clutter
    assert len(s.paths) == len(s.labels) == 48 + 5 and s.classes == ["glioma", "meningioma", "notumor", "pituitary"]
    with pytest.raises(ValueError, match="no official splits"):
        load_samples(data=phantom_root, split="test")
    man = make_split(phantom_root, tmp_path / "m.csv")
    t = load_samples(manifest=man, split="test")
    assert len(t.paths) == 4 and t.targets() == [0, 1, 2, 3]
    b = load_samples(manifest=man, split="test", binary=True)
    assert b.classes == ["notumor", "tumor"] and sorted(b.labels) == ["notumor", "tumor", "tumor", "tumor"]
    with pytest.raises(ValueError, match="exactly one"):
        load_samples()
    with pytest.raises(ValueError, match="does not exist"):
        load_samples(data=tmp_path / "nope")


def test_fingerprint_is_the_split_of_the_images_wherever_they_are_stored(messy_root, tmp_path):
    from popevit.data.manifest import same_images

    cache = tmp_path / "cache"
    here = make_split(messy_root, tmp_path / "here.csv", seed=0, cache_dir=cache)
    moved = shutil.copytree(messy_root, tmp_path / "elsewhere" / "data")
    there = make_split(moved, tmp_path / "there.csv", seed=0, cache_dir=cache)
    other_seed = make_split(moved, tmp_path / "seed1.csv", seed=1, cache_dir=cache)
    fingerprint = read_manifest(here).fingerprint()
    # unreadable files are listed without a content hash, and do not turn the fingerprint off
    assert any(not r.content_hash for r in read_manifest(here).select(EXCLUDED)) and fingerprint is not None
    assert here.read_bytes() != there.read_bytes() and read_manifest(there).fingerprint() == fingerprint
    assert same_images(here, there) and not same_images(here, other_seed)
    # one image's bytes changed under the same name: other images
    changed = next(p for p in sorted(moved.rglob("*.png")) if p.stat().st_size > 1000)
    changed.write_bytes(changed.read_bytes()[:-1] + b"\0")
    rehashed = make_split(moved, tmp_path / "changed.csv", seed=0, cache_dir=cache)
    assert read_manifest(rehashed).fingerprint() != fingerprint
    # a hand-written manifest without content hashes has none: its images are known only by path
    (tmp_path / "hand.csv").write_text(f"path,label,split\n{changed},glioma,train\n")
    assert read_manifest(tmp_path / "hand.csv").fingerprint() is None
    (tmp_path / "broken.csv").write_text("not,a,manifest\n")
    assert not same_images(here, tmp_path / "broken.csv")


def test_below_common_folder():
    from popevit.data.manifest import below_common_folder

    assert below_common_folder(["/d/T/glioma/1.jpg", "/d/T/notumor/2.jpg"]) == ["glioma/1.jpg", "notumor/2.jpg"]
    assert below_common_folder(["/d/T/glioma/1.jpg"]) == ["1.jpg"]
    assert below_common_folder(["/x.jpg", "/y/z.jpg"]) == ["x.jpg", "y/z.jpg"]
    assert below_common_folder(["a/./b.jpg", "a/c/d.jpg"]) == ["b.jpg", "c/d.jpg"]
    # written on Windows, read anywhere
    assert below_common_folder([r"C:\d\T\glioma\1.jpg", "C:/d/T/notumor/2.jpg"]) == ["glioma/1.jpg", "notumor/2.jpg"]
    assert (
        below_common_folder(["/a/b.jpg", "c/d.jpg"]) is None and below_common_folder([r"C:\a.jpg", r"D:\b.jpg"]) is None
    )
    assert below_common_folder([]) == []
