"""inspect / audit reports and the `popevit data` commands (synth, inspect, split, audit, download)."""

from __future__ import annotations

import csv
import json
import shutil
import time

import pytest
from typer.testing import CliRunner

from popevit.cli.data import app
from popevit.data.audit import audit, format_audit
from popevit.data.download import reachable
from popevit.data.inspection import inspect_data

runner = CliRunner()


def test_inspect_report(messy_root, tmp_path):
    r = inspect_data(messy_root, cache_dir=tmp_path / "c")
    assert r["num_images"] == 48 + 9 and r["num_readable"] == 48 + 5
    assert r["classes"] == {"glioma": 14, "meningioma": 13, "notumor": 15, "pituitary": 15}
    assert [p.split("/")[-1] for p in r["format_mismatch"]] == ["png_named.jpg"]
    assert {p.split("/")[-1] for p in r["unreadable"]} == {"empty.jpg", "truncated.jpg", "corrupt.png", "bomb.png"}
    assert r["exact_duplicate_groups"] == 2 and r["exact_redundant_copies"] == 2
    assert r["label_conflicts"] == {"exact": 0, "near": 1}
    near = {frozenset(p.split("/")[-1] for p in g["paths"]): g["conflict"] for g in r["near_groups"]}
    assert near[frozenset({"glioma_0002.png", "glioma_0002_small.jpg"})] is False
    assert near[frozenset({"notumor_0003.png", "conflict_0003.jpg"})] is True
    assert r["near_pairs_across_class"] == 1 and r["modes"]["glioma"]
    json.dumps(r)  # serialisable


def test_audit_leakage_and_probes(phantom_root, tmp_path):
    test = tmp_path / "test"
    for c in ("glioma", "notumor"):
        (test / c).mkdir(parents=True)
    shutil.copy(phantom_root / "glioma" / "glioma_0003.png", test / "glioma" / "leak.png")  # exact leak
    from tests.data.conftest import near_copy

    near_copy(phantom_root / "notumor" / "notumor_0002.png", test / "notumor" / "near.jpg")  # near leak
    shutil.copy(phantom_root / "notumor" / "notumor_0008.png", test / "notumor" / "clean.png")
    (test / "notumor" / "notumor_0008.png").unlink(missing_ok=True)
    train = tmp_path / "train"
    shutil.copytree(phantom_root, train, ignore=shutil.ignore_patterns("notumor_0008.png"))
    pairs = tmp_path / "pairs.csv"
    r = audit(train, test, pairs_csv=pairs, cache_dir=tmp_path / "c", preprocess=None)
    assert r["cross_exact"] == 1 and r["cross_near"] == 1
    rows = list(csv.DictReader(pairs.read_text().splitlines()))
    assert {(x["kind"], x["path_b"].split("/")[-1]) for x in rows} == {("exact", "leak.png"), ("near", "near.jpg")}
    assert r["num_images"] == 47 and r["majority"] == pytest.approx(12 / 47)
    assert 0 <= r["shortcut_raw"] <= 1 and 0 <= r["shortcut_preprocessed"] <= 1


@pytest.mark.parametrize("threshold", [-1, None, 0, 28])
def test_audit_finds_exact_copies_whatever_the_near_threshold(phantom_root, tmp_path, threshold):
    for split, names in (("train", ["glioma_0000", "glioma_0001"]), ("test", ["glioma_0001", "glioma_0002"])):
        (tmp_path / split / "glioma").mkdir(parents=True)
        for n in names:
            shutil.copy(phantom_root / "glioma" / f"{n}.png", tmp_path / split / "glioma")
    r = audit(tmp_path / "train", tmp_path / "test", near_threshold=threshold, cache_dir=tmp_path / "c", probe=False)
    assert r["cross_exact"] == 1 and r["comparisons"][0]["b_images_with_match"] == 1
    assert r["near_threshold"] == (None if threshold in (-1, None) else threshold)
    assert ("near duplicates not searched" in format_audit(r)) == (r["near_threshold"] is None)


def test_cli_synth_inspect_split_audit(tmp_path):
    data = tmp_path / "ph"
    res = runner.invoke(app, ["synth", str(data), "--per-class", "3", "--size", "32", "--seed", "1"])
    assert res.exit_code == 0, res.output
    assert len(list((data / "glioma").glob("*.png"))) == 3
    cache = str(tmp_path / "c")
    res = runner.invoke(app, ["inspect", str(data), "--json", str(tmp_path / "i.json"), "--cache-dir", cache])
    assert res.exit_code == 0, res.output and "exact duplicates" in res.output
    keys = {"num_images", "classes", "exact_duplicate_groups", "exact_redundant_copies", "near_duplicate_groups",
            "format_mismatch", "unreadable"}  # fmt: skip
    assert keys <= set(json.loads((tmp_path / "i.json").read_text()))
    res = runner.invoke(app, ["split", str(data), "--out", str(tmp_path / "m.csv"), "--ratios", "0.34,0.33,0.33",
                              "--cache-dir", cache])  # fmt: skip
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["audit", "--train", str(tmp_path / "m.csv"), "--json", str(tmp_path / "a.json"),
                              "--no-probe", "--cache-dir", cache])  # fmt: skip
    assert res.exit_code == 0, res.output
    a = json.loads((tmp_path / "a.json").read_text())
    assert a["cross_exact"] == 0 and (tmp_path / "a_pairs.csv").is_file()
    res = runner.invoke(app, ["split", str(tmp_path / "missing"), "--out", str(tmp_path / "x.csv")])
    assert res.exit_code == 2 and "does not exist" in res.output


@pytest.mark.parametrize("command", ["split", "inspect", "audit"])
def test_cli_unwritable_output_is_a_clean_error(phantom_root, tmp_path, command):
    blocker = tmp_path / "a_file"
    blocker.write_text("")  # a file where the output folder should be: fails for root too
    out = str(blocker / "out.csv")
    args = {
        "split": ["split", str(phantom_root), "--out", out],
        "inspect": ["inspect", str(phantom_root), "--json", out],
        "audit": ["audit", "--train", str(phantom_root), "--json", out, "--no-probe"],
    }[command]
    res = runner.invoke(app, [*args, "--cache-dir", str(tmp_path / "c")])
    assert res.exit_code == 2 and "error: " in res.output and str(blocker) in res.output, res.output


def test_cli_audit_missing_train_names_the_right_flag(tmp_path):
    res = runner.invoke(app, ["audit", "--train", str(tmp_path / "missing.csv"), "--no-probe"])
    assert res.exit_code == 2 and "--train" in res.output and "--data" not in res.output, res.output


def test_download_fails_fast_offline(tmp_path):
    assert reachable("host.invalid", timeout=1.0) is False
    if reachable(timeout=2.0):
        pytest.skip("network reachable: the offline path cannot be exercised here")
    t = time.perf_counter()
    res = runner.invoke(app, ["download", "kaggle-brain-tumor-mri", "--out", str(tmp_path / "d")])
    assert time.perf_counter() - t < 10
    assert res.exit_code == 2
    assert "kaggle.com/datasets/masoudnickparvar/brain-tumor-mri-dataset" in res.output and "--data" in res.output
    res = runner.invoke(app, ["download", "kaggle-brain-tumour-mri", "--out", str(tmp_path / "d")])
    assert res.exit_code == 2 and "did you mean 'kaggle-brain-tumor-mri'" in res.output


def test_split_moves_an_official_val_duplicate_to_train_and_says_so(phantom_root, tmp_path):
    root = tmp_path / "d"
    for split, first in (("train", 0), ("val", 8), ("test", 10)):
        for c in ("glioma", "notumor"):
            (root / split / c).mkdir(parents=True)
            for i in range(first, first + 2 if split != "train" else 8):
                shutil.copy(phantom_root / c / f"{c}_{i:04d}.png", root / split / c)
    shutil.copy(phantom_root / "glioma" / "glioma_0000.png", root / "val" / "glioma" / "copy.png")
    res = runner.invoke(app, ["split", str(root), "--out", str(tmp_path / "m.csv"), "--cache-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "m.csv", encoding="utf-8") as f:
        rows = {r["path"].rsplit("/", 1)[-1]: r for r in csv.DictReader(f)}
    assert rows["copy.png"]["split"] == "train" and "moved to train" in rows["copy.png"]["note"]
    assert rows["copy.png"]["group"] == rows["glioma_0000.png"]["group"]
    assert all(rows[f"{c}_{i:04d}.png"]["split"] == "val" for c in ("glioma", "notumor") for i in (8, 9))
    assert "note     1 x official val image moved to train" in res.output
