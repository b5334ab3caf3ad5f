"""The real Kaggle Training folder (skipped when absent): counts, mislabelled formats, duplicates, leak-free split."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import pytest

from popevit.data import discover, make_split, read_manifest
from popevit.data.decode import extension_format, sniff_format
from popevit.data.dedup import Fingerprint, exact_groups
from popevit.data.manifest import EXCLUDED

pytestmark = pytest.mark.realdata

PNG_AS_JPG = {f"Tr-no_{n}.jpg" for n in (1005, 1011, 1012, 1019, 1020)}


@pytest.fixture(scope="module")
def real_files(real_data_root):
    d = discover(real_data_root)
    blobs = {s.path: s.path.read_bytes() for s in d.samples}
    return d, blobs


def test_class_counts(real_files):
    d, _ = real_files
    assert d.counts() == {"glioma": 1321, "meningioma": 1339, "notumor": 1595, "pituitary": 1457}
    assert d.ignored == [] and d.layout == "class_folders"


def test_five_pngs_named_jpg(real_files):
    _, blobs = real_files
    mism = {p.name for p, b in blobs.items() if sniff_format(b[:16]) != extension_format(p)}
    assert mism == PNG_AS_JPG


def test_exact_duplicates_equal_md5_grouping(real_files):
    _, blobs = real_files
    paths = sorted(blobs)
    fps = [Fingerprint(path=p, content_hash=hashlib.sha256(blobs[p]).hexdigest()) for p in paths]
    ours = {frozenset(paths[i] for i in g) for g in exact_groups(fps)}
    by_md5 = defaultdict(set)
    for p in paths:
        by_md5[hashlib.md5(blobs[p]).hexdigest()].add(p)
    md5 = {frozenset(g) for g in by_md5.values() if len(g) > 1}
    assert ours == md5 and len(ours) == 148 and sum(len(g) - 1 for g in ours) == 191


@pytest.mark.slow
def test_manifest_has_no_cluster_in_two_splits(real_data_root, tmp_path_factory):
    """Full pipeline (fingerprints of 5712 images, ~1-2 min on 2 cores): exact and near clusters never cross."""
    tmp = tmp_path_factory.mktemp("real")
    man = read_manifest(make_split(real_data_root, tmp / "m.csv", cache_dir=tmp / "cache", workers=2))
    assert len(man.rows) == 5712 and not man.select(EXCLUDED)
    where = defaultdict(set)
    for r in man.rows:
        where[r.group].add(r.split)
    assert all(len(s) == 1 for s in where.values())
    by_hash = defaultdict(set)
    for r in man.rows:
        by_hash[r.content_hash].add(r.group)
    assert all(len(g) == 1 for g in by_hash.values())  # every exact duplicate shares its group
    assert len(where) < 5712 - 191  # near duplicates joined beyond the exact ones
    counts = man.counts()
    n = {s: sum(c.values()) for s, c in counts.items()}
    assert abs(n["test"] / 5712 - 0.1) < 0.02 and abs(n["val"] / 5712 - 0.1) < 0.02
    assert Path(man.rows[0].path).is_absolute()
    # The independent check: an exhaustive leakage audit of the manifest finds no exact or near pair across splits.
    from popevit.data.audit import audit

    report = audit(tmp / "m.csv", cache_dir=tmp / "cache", workers=2, probe=False)
    assert report["cross_exact"] == 0 and report["cross_near"] == 0, report
