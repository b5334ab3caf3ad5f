"""compare_runs on saved predictions (seed groups, alignment errors) and the self-contained HTML report."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from popevit.evaluation.compare import (
    compare_runs,
    group_name,
    group_names,
    group_runs,
    match_pairs,
    split_seed,
    to_markdown,
)
from popevit.evaluation.evaluate import METRICS, format_metrics, summarize
from popevit.evaluation.plots import plot_all
from popevit.evaluation.predictions import PREDICTIONS, Predictions
from popevit.evaluation.report import build_report

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]
N = 120


def _labels() -> tuple[list[str], np.ndarray]:
    y = np.random.default_rng(0).integers(0, 4, N)
    return [f"/data/img_{i:03d}.png" for i in range(N)], y


def _fake_run(root: Path, name: str, skill: float, seed: int, plots: bool = False) -> Path:
    """A run folder with the files training and `popevit evaluate` write, from synthetic probabilities."""
    paths, y = _labels()
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(N, 4)) + skill * np.eye(4)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    run = root / name
    ev = run / "eval" / "test"
    ev.mkdir(parents=True)
    preds = Predictions(paths, y, proba, CLASSES)
    preds.save(ev / PREDICTIONS)
    result = {
        "run": str(run),
        "classes": CLASSES,
        "source": {"manifest": str(run / "manifest.csv"), "split": "test"},
        "tta": False,
        "bootstrap": {"method": "percentile", "n_boot": 200, "seed": 0},
        **summarize(preds, 200, 0),
    }
    if plots:
        result["plots"] = {k: p.name for k, p in plot_all(y, proba, CLASSES, ev).items()}
    (ev / METRICS).write_text(json.dumps(result))
    (run / "config.yaml").write_text(f"name: {name}\nmodel:\n  pos_enc: pope\n")
    (run / "run.json").write_text(json.dumps({"popevit_version": "0.1.0", "wall_s": 12.5}))
    (run / "val_metrics.json").write_text(json.dumps({"val/acc": 0.8, "val/auroc_macro": 0.9}))
    (run / "manifest.csv").write_text(
        "path,label,split,group\n"
        + "".join(
            f"{p},{CLASSES[c]},{'train' if i % 3 else 'test'},{i // 2}\n"
            for i, (p, c) in enumerate(zip(paths, y, strict=True))
        )
    )
    (run / "logs" / "csv").mkdir(parents=True)
    (run / "logs" / "csv" / "metrics.csv").write_text(
        "epoch,step,train/loss,val/loss,val/acc,val/auroc_macro\n"
        + "".join(
            f"{e},{e * 10},{1.0 / (e + 1)},,,\n{e},{e * 10},,{1.2 / (e + 1)},{0.5 + e / 20},{0.6 + e / 20}\n"
            for e in range(5)
        )
    )
    audit = {
        "near_threshold": 28,
        "num_images": N,
        "shortcut_raw": 0.31,
        "shortcut_preprocessed": 0.27,
        "majority": 0.3,
        "comparisons": [
            {"a": "train", "b": "test", "cross_exact": 0, "cross_near": 1, "b_images_with_match": 1, "b_images": 40}
        ],
    }
    (run / "data_audit.json").write_text(json.dumps(audit))
    return run


def test_group_runs_by_seed_suffix(tmp_path, monkeypatch):
    assert split_seed("pope-s3") == ("pope", 3) and split_seed("rope_seed12") == ("rope", 12)
    assert split_seed("pos_enc-pope_seed-2") == ("pos_enc-pope", 2)  # sweep trial folders
    assert split_seed("baseline") == ("baseline", None)
    # a seed suffix needs its separator: these name a patch size and an image size, not seeds 16 and 224
    assert split_seed("dino-vits16") == ("dino-vits16", None) and split_seed("rope-res224") == ("rope-res224", None)
    runs = [tmp_path / n for n in ("pope-s0", "pope-s1", "rope-s0", "rope-s1", "cnn")]
    assert group_runs(runs) == [runs[:2], runs[2:4], runs[4:]]
    # a run linked under another name is grouped (and paired by seed) by the link's name, not its target's
    for n in ("pope-s0", "pope-s1", "rope-s5"):
        (tmp_path / n).mkdir()
    (tmp_path / "rope-s1").symlink_to(tmp_path / "pope-s1")  # the target's name would join it to the pope group
    a, b = [tmp_path / "pope-s0", tmp_path / "pope-s1"], [tmp_path / "rope-s5", tmp_path / "rope-s1"]
    assert group_runs([*a, *b]) == [a, b]
    assert match_pairs(a, b) == [(1, 1)]  # paired by the link's seed, 1, not by position
    assert group_name([tmp_path / "rope-s1"]) == "rope"
    monkeypatch.chdir(tmp_path / "pope-s0")
    assert group_runs(["."]) == [[Path(".")]] and group_name([Path(".")]) == "pope"


def test_compare_seed_groups(tmp_path):
    runs = [_fake_run(tmp_path, f"good-s{s}", 2.5, seed=s) for s in range(3)]
    runs += [_fake_run(tmp_path, f"weak-s{s}", 0.6, seed=10 + s) for s in range(3)]
    result = compare_runs(group_runs(runs), n_boot=300, seed=0, out=tmp_path / "cmp")
    assert [g["name"] for g in result["groups"]] == ["good", "weak"]
    acc = result["groups"][0]["metrics"]["accuracy"]
    assert len(acc["values"]) == 3 and acc["sd"] > 0
    assert acc["mean"] == pytest.approx(np.mean(acc["values"]))
    (cmp,) = result["comparisons"]
    boot = cmp["paired_bootstrap"]["auroc_macro"]
    assert boot["diff"] == pytest.approx(
        result["groups"][0]["metrics"]["auroc_macro"]["mean"] - result["groups"][1]["metrics"]["auroc_macro"]["mean"]
    )
    assert 0 < boot["lo"] < boot["diff"] < boot["hi"] and boot["p_value"] < 0.01
    assert [(p["a"], p["b"]) for p in cmp["pairs"]] == [
        ("good-s0", "weak-s0"),
        ("good-s1", "weak-s1"),
        ("good-s2", "weak-s2"),
    ]
    for pair in cmp["pairs"]:
        assert pair["mcnemar"]["b"] > pair["mcnemar"]["c"] and set(pair["delong"]) == set(CLASSES)
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["comparisons"][0]["pairs"][0]["mcnemar"] == cmp["pairs"][0]["mcnemar"]
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert md == to_markdown(result) and "| good | weak | auroc_macro |" in md


def test_compare_adjusts_p_values_for_the_false_discovery_rate_per_metric(tmp_path):
    """Four groups make six pairs per metric: each p gets its Benjamini-Hochberg q over the six, checked here against
    the step-up definition q_(i) = min over j >= i of m p_(j) / j; with two groups q equals p."""
    skills = {"a": 2.5, "b": 2.4, "c": 1.0, "d": 0.4}
    runs = [
        _fake_run(tmp_path, f"{g}-s{s}", k, seed=10 * i + s) for i, (g, k) in enumerate(skills.items()) for s in (0, 1)
    ]
    result = compare_runs(group_runs(runs), n_boot=200, seed=0)
    assert len(result["comparisons"]) == 6
    for metric in ("auroc_macro", "accuracy"):
        tests = [c["paired_bootstrap"][metric] for c in result["comparisons"]]
        p = np.array([t["p_value"] for t in tests])
        order = np.argsort(p)
        ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
        expected = np.empty_like(p)
        expected[order] = np.minimum(1, np.minimum.accumulate(ranked[::-1])[::-1])
        assert [t["q_value"] for t in tests] == pytest.approx(expected)
        assert all(t["q_value"] >= t["p_value"] for t in tests)
        assert p.min() < 0.05 < p.max()  # a real mix of clear and unclear differences
        assert any(t["q_value"] > t["p_value"] for t in tests)  # the adjustment bites
    assert "| q (BH) |" in to_markdown(result)
    two = compare_runs(group_runs(runs[:4]), n_boot=200, seed=0)["comparisons"][0]["paired_bootstrap"]
    assert all(t["q_value"] == t["p_value"] for t in two.values())


def test_compare_refuses_different_images(tmp_path):
    a = _fake_run(tmp_path, "a", 2.0, seed=0)
    b = _fake_run(tmp_path, "b", 2.0, seed=1)
    preds = Predictions.load(b / "eval" / "test" / PREDICTIONS)
    preds.subset(np.arange(N) > 0).save(b / "eval" / "test" / PREDICTIONS)
    with pytest.raises(ValueError, match="different images: 1 only in"):
        compare_runs([[a], [b]], n_boot=50)


def test_predictions_roundtrip_and_class_reorder(tmp_path):
    paths, y = _labels()
    proba = np.random.default_rng(1).dirichlet(np.ones(4), N)
    p = Predictions(paths, y, proba, CLASSES)
    q = Predictions.load(p.save(tmp_path / PREDICTIONS))
    assert q.paths == paths and np.array_equal(q.y, y) and np.allclose(q.proba, proba, rtol=1e-8)
    r = q.with_class_order(CLASSES[::-1])
    assert np.allclose(r.proba[:, 0], proba[:, 3]) and np.array_equal(r.pred, 3 - p.pred)
    assert [r.classes[i] for i in r.y] == [CLASSES[i] for i in y]


def test_report_is_self_contained(tmp_path):
    runs = [_fake_run(tmp_path, "pope-s0", 2.5, seed=0, plots=True), _fake_run(tmp_path, "rope-s0", 1.0, seed=1)]
    out = build_report(runs, tmp_path / "report.html", n_boot=100)
    page = out.read_text()
    # nothing fetched from outside: no src/href pointing to a URL or a file, only data: URIs and in-page anchors
    assert not re.search(r"""(src|href)\s*=\s*['"](?!data:|#)""", page)
    assert "<script" not in page and "@import" not in page and "url(" not in page
    imgs = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert len(imgs) >= 4 + 2  # 4 evaluation figures + 2 training-curve figures
    assert all(base64.b64decode(b)[:8] == b"\x89PNG\r\n\x1a\n" for b in imgs)
    for text in (
        "Run pope-s0",
        "Run rope-s0",
        "config.yaml",
        "Training curves",
        "auroc_macro",
        "shortcut probe on 120 images",
        "1/40 test images have a match",
        "Duplicate clusters",
        "Paired tests",
        "McNemar",
        "DeLong",
        "[0.",
    ):
        assert text in page, text


def _external_eval(run: Path, skill: float, seed: int) -> None:
    """A binary external evaluation (tumour classes mapped onto 'tumor'), as a cross-dataset evaluation writes it."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 60)
    logits = rng.normal(size=(60, 2)) + skill * np.eye(2)[y]
    proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    preds = Predictions([f"/ext/{i}.jpg" for i in range(60)], y, proba, ["notumor", "tumor"])
    ev = run / "eval" / "data-br35h"
    ev.mkdir(parents=True)
    preds.save(ev / PREDICTIONS)
    source = {"data": "/ext/br35h", "split": None, "external": True, "name": "Br35H"}
    label_map = {"glioma": "tumor", "meningioma": "tumor", "pituitary": "tumor", "notumor": "notumor"}
    result = {"classes": ["notumor", "tumor"], "source": source, "label_map": label_map, **summarize(preds, 200, 0)}
    (ev / METRICS).write_text(json.dumps(result))


def test_report_answers_first_then_external_validation_and_explanations(tmp_path):
    runs = [_fake_run(tmp_path, "rope-s0", 1.0, seed=1), _fake_run(tmp_path, "pope-s0", 2.5, seed=0)]
    for run, skill in zip(runs, (1.0, 2.5), strict=True):
        info = {"wall_s": 30.0, "epochs": 8, "upstream": [], "data_stats": None, "cpu": {"model": "AMD EPYC"}}
        (run / "run.json").write_text(json.dumps(info))
        _external_eval(run, skill, seed=7)
    explain = runs[1] / "explain" / "rollout"
    explain.mkdir(parents=True)
    Image.new("RGB", (40, 30), "white").save(explain / "gallery_confident.png")
    faith = {
        "images": 12,
        "methods": {"rollout": {"deletion_auc": 0.21, "insertion_auc": 0.64}},
        "random": {"deletion_auc": 0.35, "insertion_auc": 0.41},
        "mask": {
            "images": 9,
            "area_fraction": 0.04,
            "methods": {"rollout": {"mass_share": 0.3, "pointing_hit_rate": 0.78}},
        },
    }
    (explain / "faithfulness.json").write_text(json.dumps(faith))
    page = build_report(runs, tmp_path / "report.html", n_boot=100).read_text()
    answer = page.index("Answer")
    assert answer < page.index("External validation: Br35H") < page.index("Run rope-s0")
    assert "Best by accuracy: <b>pope</b>" in page[answer : answer + 400]
    first = page[answer : page.index("Run rope-s0")]
    assert "n = 120 images" in first and "q (BH)" in first and "Δ accuracy vs best" in first
    assert "<tr class='best'><td><b>pope</b>" in first  # the best model heads the table
    assert "significant difference" in first and "test split of manifest.csv" in first
    ext = first[first.index("External validation: Br35H") :]
    assert "tumour sensitivity: internal → Br35H" in ext and "glioma, meningioma, pituitary → tumor" in ext
    assert ext.count("</span> → ") == 6  # internal → external, per run (2) and tumour-level metric (3)
    assert "pointing game" in first and "0.78" in first and "chance 0.04" in first
    assert "<h2 id='explanations'>Explanations</h2>" in page and "gallery confident" in page
    assert "AMD EPYC" in page  # run facts in words: no raw records ({'model': ...}), no empty fields
    for raw in ("upstream", "data_stats", "{&#x27;", "&gt;None<", ">[]<"):
        assert raw not in page, raw


def test_format_metrics_side_by_side(tmp_path):
    run = _fake_run(tmp_path, "r", 2.0, seed=0)
    result = json.loads((run / "eval" / "test" / METRICS).read_text())
    result["dedup"] = {**result, "n": 100}
    text = format_metrics(result, ["accuracy", "auroc_macro"])
    assert "no duplicate in train (n=100)" in text and text.count("[") == 4


def test_compare_and_report_cli(tmp_path):
    import typer
    from typer.testing import CliRunner

    from popevit.cli.compare import compare
    from popevit.cli.report import report

    runs = [str(_fake_run(tmp_path, n, 1.5, seed=i)) for i, n in enumerate(("a-s0", "a-s1", "b-s0", "b-s1"))]
    app = typer.Typer()
    app.command("compare")(compare)
    app.command("report")(report)
    res = CliRunner().invoke(app, ["compare", *runs, "--out", str(tmp_path / "cmp"), "--n-boot", "100"])
    assert res.exit_code == 0, res.output
    assert "| a | b | accuracy |" in res.output and (tmp_path / "cmp" / "compare.json").is_file()
    res = CliRunner().invoke(app, ["compare", *runs[:2], "--n-boot", "100"])
    assert res.exit_code != 0 and "fall in one group" in res.output
    res = CliRunner().invoke(app, ["report", *runs[:2], "--out", str(tmp_path / "r.html"), "--n-boot", "50"])
    assert res.exit_code == 0, res.output
    assert "On evaluation 'test'" in (tmp_path / "r.html").read_text()


def test_groups_that_share_a_name_are_named_by_their_runs(tmp_path):
    runs = [_fake_run(tmp_path, f"pope-s{s}", 2.0, seed=s) for s in range(2)]
    assert group_names([[r] for r in runs]) == ["pope-s0", "pope-s1"]  # --no-group: not "pope" twice
    assert group_names([runs]) == ["pope"]
    result = compare_runs([[r] for r in runs], n_boot=50)
    assert [g["name"] for g in result["groups"]] == ["pope-s0", "pope-s1"]
    assert "| pope-s0 | pope-s1 | auroc_macro |" in to_markdown(result)


def test_compare_warns_when_a_group_pools_different_models(tmp_path, caplog):
    from popevit.artifact import ModelMeta, save_artifact
    from popevit.config import PreprocessConfig
    from popevit.models import create_model

    runs = [_fake_run(tmp_path, name, 2.0, seed=i) for i, name in enumerate(["vit-s8", "vit-s16", "cnn-s8"])]
    for run, patch in zip(runs, (8, 16, 8), strict=True):
        kwargs = {"num_classes": 4, "in_chans": 1, "img_size": 32, "patch_size": patch}
        meta = ModelMeta("vit_p8_w32_d2", kwargs, CLASSES, PreprocessConfig())
        save_artifact(create_model("vit_p8_w32_d2", **kwargs), meta, run)
        # the cached predictions stand for these weights: recorded after them, as `popevit evaluate` would
        (run / "eval" / "test" / PREDICTIONS).touch()
    with caplog.at_level("WARNING", logger="popevit.evaluation.compare"):
        compare_runs(group_runs(runs), n_boot=20)
    (warning,) = [r.getMessage() for r in caplog.records if "pools different models" in r.getMessage()]
    assert "'vit'" in warning and "patch_size': 8" in warning and "patch_size': 16" in warning


def test_compare_cli_reports_bad_input_in_one_line(tmp_path):
    import typer
    from typer.testing import CliRunner

    from popevit.cli.compare import compare

    a, b = _fake_run(tmp_path, "a", 2.0, seed=0), _fake_run(tmp_path, "b", 2.0, seed=1)
    preds = Predictions.load(b / "eval" / "test" / PREDICTIONS)
    preds.subset(np.arange(N) > 0).save(b / "eval" / "test" / PREDICTIONS)
    app = typer.Typer()
    app.command()(compare)
    cli = CliRunner().invoke(app, [str(a), str(b), "--out", str(tmp_path / "cmp"), "--n-boot", "20"])
    assert cli.exit_code == 2
    assert "error: runs were evaluated on different images: 1 only in" in cli.output
    assert "Traceback" not in cli.output


def test_align_matches_images_stored_in_another_folder_only_when_their_manifests_agree():
    from popevit.evaluation.compare import align

    rng = np.random.default_rng(0)
    names = [f"{c}/{i}.jpg" for c in ("glioma", "notumor") for i in range(3)]
    y = np.array([0, 0, 0, 1, 1, 1])
    here = Predictions([f"/work/data/T/{n}" for n in names], y, rng.dirichlet([1, 1], 6), ["glioma", "notumor"])
    order = [4, 0, 5, 2, 1, 3]  # another machine: another folder, rows in another order
    there = Predictions(
        [rf"D:\mri\T\{names[i]}".replace("/", "\\") for i in order], y[order], here.proba[order], here.classes
    )
    for a, b in ((None, None), ("f1", None), ("f1", "f2")):  # unknown or other images: names do not pair them
        here.source_fingerprint, there.source_fingerprint = a, b
        with pytest.raises(ValueError, match=r"evaluated on different images: 6 only in here.*nothing shows that they"):
            align([here, there], ["here", "there"])
    here.source_fingerprint = there.source_fingerprint = "f1"
    moved = align([here, there], ["here", "there"])[1]
    assert moved.paths == here.paths and np.array_equal(moved.proba, here.proba) and np.array_equal(moved.y, y)
    there.y = there.y[::-1].copy()  # the same names with other labels are still refused
    with pytest.raises(ValueError, match="images have different labels"):
        align([here, there], ["here", "there"])
