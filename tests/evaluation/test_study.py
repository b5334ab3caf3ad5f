"""Resolution extrapolation (evaluate at another input size) and ``popevit study`` on tiny phantom runs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from popevit.artifact import ModelMeta, load_artifact, save_artifact
from popevit.config import PreprocessConfig
from popevit.evaluation.evaluate import evaluate_run
from popevit.evaluation.metrics import point_metrics
from popevit.evaluation.predictions import Predictions
from popevit.evaluation.study import seed_mean_with_ci

CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def _make_run(run: Path, pos_enc: str, seed: int, manifest: Path) -> Path:
    from popevit.models import create_model

    torch.manual_seed(seed)
    kwargs = {"num_classes": 4, "in_chans": 1, "img_size": 32, "pos_enc": pos_enc}
    save_artifact(
        create_model("vit_p8_w32_d2", **kwargs),
        ModelMeta("vit_p8_w32_d2", kwargs, CLASSES, PreprocessConfig(img_size=32)),
        run,
    )
    (run / "manifest.csv").write_bytes(manifest.read_bytes())
    info = {"wall_s": 60.0, "epochs": 2, "device": "cpu (test)"}
    if pos_enc == "pope":  # the other runs stand for ones recorded before hit_time_cap and cpu existed
        info["hit_time_cap"] = seed == 0
        info["cpu"] = {"model": "Test CPU", "capability": "AVX2"}
    (run / "run.json").write_text(json.dumps(info))
    return run


@pytest.fixture(scope="module")
def study_runs(phantom_root, tmp_path_factory) -> tuple[Path, list[Path]]:
    from popevit.data import make_split

    cache = tmp_path_factory.mktemp("cache")
    manifest = make_split(
        phantom_root, tmp_path_factory.mktemp("split") / "m.csv", seed=0, ratios=(0.5, 0.25, 0.25), cache_dir=cache
    )
    root = tmp_path_factory.mktemp("runs")
    runs = [_make_run(root / f"{pe}-s{s}", pe, s, manifest) for pe in ("pope", "rope_axial") for s in (0, 1)]
    return cache, runs


def test_seed_mean_with_ci_is_the_mean_of_the_runs():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    probas = []
    for skill in (1.0, 2.0, 3.0):
        logits = rng.normal(size=(200, 4)) + skill * np.eye(4)[y]
        probas.append(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
    res = seed_mean_with_ci(y, probas, CLASSES, n_boot=300, seed=0)
    for m in ("auroc_macro", "accuracy", "balanced_accuracy", "ece"):
        per_run = [point_metrics(y, p, CLASSES)[m] for p in probas]
        assert res[m]["values"] == pytest.approx(per_run)
        assert res[m]["value"] == pytest.approx(np.mean(per_run))
        assert res[m]["sd"] == pytest.approx(np.std(per_run, ddof=1))
    for m in ("auroc_macro", "accuracy"):
        assert res[m]["lo"] < res[m]["value"] < res[m]["hi"]
        # averaging three runs narrows the interval compared with the weakest run alone
        single = seed_mean_with_ci(y, probas[:1], CLASSES, metrics=(m,), n_boot=300, seed=0)[m]
        assert res[m]["hi"] - res[m]["lo"] < single["hi"] - single["lo"]


def test_evaluate_at_a_larger_size_feeds_the_model_larger_images(study_runs):
    cache, runs = study_runs
    run = runs[0]
    base = evaluate_run(run, n_boot=20, plots=False, cache_dir=cache, device="cpu")
    big = evaluate_run(run, n_boot=20, plots=False, cache_dir=cache, device="cpu", img_size=48)
    assert big["img_size"] == 48 and base["img_size"] == 32
    assert big["out"].endswith("test-48px") and base["out"].endswith("test")
    p32 = Predictions.load(Path(base["out"]) / "predictions.csv")
    p48 = Predictions.load(Path(big["out"]) / "predictions.csv")
    assert p32.paths == p48.paths and not np.allclose(p32.proba, p48.proba)
    # the 48-px probabilities are exactly the model on 48-px preprocessed images (6x6 patch grid)
    from popevit.data.dataset import ImageDataset

    model, meta = load_artifact(run)
    ds = ImageDataset(
        [Path(p) for p in p48.paths[:3]],
        [0, 0, 0],
        meta.preprocess.model_copy(update={"img_size": 48}),
        cache_dir=cache,
    )
    x = torch.stack([ds[i][0] for i in range(3)])
    assert x.shape[-1] == 48
    with torch.inference_mode():
        direct = model.eval()(x).softmax(-1).double().numpy()
    np.testing.assert_allclose(p48.proba[:3], direct, atol=1e-5)


def test_evaluate_size_not_a_patch_multiple_names_the_fix(study_runs):
    cache, runs = study_runs
    with pytest.raises(ValueError, match=r"not a multiple of the model's patch size 8; use e.g. 32 or 40"):
        evaluate_run(runs[0], n_boot=20, plots=False, cache_dir=cache, device="cpu", img_size=36)


def test_study_cli_table_extrapolation_and_tests(study_runs, tmp_path, monkeypatch):
    import typer
    from typer.testing import CliRunner

    from popevit.cli.study import study

    cache, runs = study_runs
    monkeypatch.setenv("POPEVIT_CACHE", str(cache))
    app = typer.Typer()
    app.command()(study)
    out = tmp_path / "study"
    cli = CliRunner().invoke(
        app, [*map(str, runs), "--sizes", "40,48", "--out", str(out), "--n-boot", "50", "--device", "cpu"]
    )
    assert cli.exit_code == 0, cli.output
    assert "compare-40px/compare.md" in cli.output and "compare-48px/compare.md" in cli.output
    res = json.loads((out / "study.json").read_text())
    assert [g["name"] for g in res["groups"]] == ["pope", "rope_axial"]
    assert res["train_size"] == 32 and res["sizes"] == [32, 40, 48]
    for g, pe in zip(res["groups"], ("pope", "rope_axial"), strict=True):
        model, _ = load_artifact(runs[0 if pe == "pope" else 2])
        assert g["cost"]["params"] == sum(p.numel() for p in model.state_dict().values())
        device = "cpu (test), Test CPU [AVX2]" if pe == "pope" else "cpu (test)"
        assert g["cost"]["device"] == device and g["cost"]["capped"] == (1 if pe == "pope" else None)
        assert g["cost"]["train_img_per_s"] == pytest.approx(g["cost"]["epochs"] * _n_train(runs[0]) / 60.0)
        assert [e["size"] for e in g["extrapolation"]] == [32, 40, 48]
        # the training-size point of the curve is the table's value
        assert g["extrapolation"][0]["metrics"]["auroc_macro"]["value"] == pytest.approx(
            g["metrics"]["auroc_macro"]["value"]
        )
    with open(out / "study.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["group"], r["test_size"]) for r in rows if r["metric"] == "auroc_macro"} == {
        (g, s) for g in ("pope", "rope_axial") for s in ("32", "40", "48")
    }
    assert (out / "extrapolation.png").read_bytes()[:4] == b"\x89PNG"
    md = (out / "study.md").read_text()
    assert "| pope vs" not in md and "48 px" in md
    # unknown is not shown as "not capped"; the CPU where run.json names it
    assert "| 1/2 | cpu (test), Test CPU [AVX2] |" in md and "| ?/2 | cpu (test) |" in md
    assert "warnings" not in res and "Warning" not in md  # rope_axial's CPU is not recorded: nothing to warn of
    compare = json.loads((out / "compare" / "compare.json").read_text())
    assert [c["a"] for c in compare["comparisons"]] == ["pope"] and len(compare["comparisons"][0]["pairs"]) == 2
    # the paired tests again at each extra size, on the predictions behind the extrapolation curve
    for size in (40, 48):
        at = json.loads((out / f"compare-{size}px" / "compare.json").read_text())
        assert at["source"]["img_size"] == size and len(at["comparisons"][0]["pairs"]) == 2
        for g, cg in zip(res["groups"], at["groups"], strict=True):
            curve = next(e for e in g["extrapolation"] if e["size"] == size)["metrics"]["auroc_macro"]["value"]
            assert cg["metrics"]["auroc_macro"]["mean"] == pytest.approx(curve)
        assert f"at {size} px" in (out / f"compare-{size}px" / "compare.md").read_text()


def test_study_warns_when_groups_ran_on_different_machines(study_runs, tmp_path, monkeypatch):
    from popevit.evaluation.study import machine_warning, run_study

    x, y = "Intel(R) Xeon(R) Processor [AVX512]", "AMD EPYC 7B13 [AVX2]"
    assert machine_warning({"pope": {x}, "rope": {x}}) is None
    assert machine_warning({"pope": {x, y}, "rope": {y, x}}) is None  # every group has seeds on both
    assert machine_warning({"pope": {x}, "none": set()}) is None  # nothing recorded: nothing to say
    warning = machine_warning({"pope": {x}, "rope": {y}, "none": set()})
    assert warning is not None and f"(pope: {x}; rope: {y})" in warning

    cache, runs = study_runs
    monkeypatch.setenv("POPEVIT_CACHE", str(cache))
    pope = _make_run(tmp_path / "pope-s0", "pope", 0, runs[0] / "manifest.csv")
    rope = _make_run(tmp_path / "rope_axial-s0", "rope_axial", 0, runs[0] / "manifest.csv")
    info = json.loads((rope / "run.json").read_text())
    (rope / "run.json").write_text(json.dumps({**info, "device": "cuda", "cpu": {"model": "Other CPU"}}))
    res = run_study([[pope], [rope]], out=tmp_path / "s", n_boot=20, device="cpu", paired_tests=False)
    assert res["warnings"] == [machine_warning({"pope": {"Test CPU [AVX2]"}, "rope_axial": {"cuda"}})]
    assert f"**Warning:** {res['warnings'][0]}" in (tmp_path / "s" / "study.md").read_text()


def _n_train(run: Path) -> int:
    with open(run / "manifest.csv", newline="") as fh:
        return sum(r["split"] == "train" for r in csv.DictReader(fh))


def test_study_aligns_every_size_to_the_training_size_images(study_runs, tmp_path, monkeypatch):
    from popevit.evaluation.study import run_study

    cache, runs = study_runs
    monkeypatch.setenv("POPEVIT_CACHE", str(cache))
    kw = {"sizes": [40], "n_boot": 30, "device": "cpu", "paired_tests": False}
    first = run_study([runs[:2]], out=tmp_path / "a", **kw)
    for run in runs[:2]:  # the same predictions at 40 px, rows in another order
        path = run / "eval" / "test-40px" / "predictions.csv"
        preds = Predictions.load(path)
        preds.reorder(preds.paths[::-1]).save(path)
    second = run_study([runs[:2]], out=tmp_path / "b", **kw)
    curve = [g["extrapolation"] for g in (first["groups"][0], second["groups"][0])]
    assert curve[0] == curve[1] and curve[0][1]["size"] == 40


def test_archived_runs_give_the_study_of_their_run_folders(study_runs, tmp_path, monkeypatch):
    import shutil

    import typer
    from typer.testing import CliRunner

    from popevit.cli.archive import archive
    from popevit.evaluation.study import run_study

    cache, runs = study_runs
    monkeypatch.setenv("POPEVIT_CACHE", str(cache))
    kw = {"sizes": [40], "n_boot": 50, "device": "cpu"}
    live = run_study([runs[:2], runs[2:]], out=tmp_path / "live", **kw)
    copies = [shutil.copytree(r, tmp_path / "gone" / r.name) for r in runs[:2]]
    app = typer.Typer()
    app.command()(archive)
    cli = CliRunner().invoke(app, [*map(str, copies), "--out", str(tmp_path / "archive")])
    assert cli.exit_code == 0, cli.output
    shutil.rmtree(tmp_path / "gone")  # the run folders are gone; the archives stand for them
    archived = [tmp_path / "archive" / r.name for r in runs[:2]]
    assert sorted(p.name for p in (tmp_path / "archive").iterdir()) == [r.name for r in runs[:2]]  # no temp left
    assert cli.output.count("archived ") == 2 and "test-40px" in cli.output
    for a in archived:
        assert not (a / "model.safetensors").exists() and not (a / "manifest.csv").exists()
        assert (a / "eval" / "test-40px" / "predictions.csv").is_file()
    # the archived pope group beside the live rope group: the same table, costs, curves and paired tests
    mixed = run_study([archived, runs[2:]], out=tmp_path / "mixed", **kw)
    assert mixed["groups"] == live["groups"]
    for sub in ("compare", "compare-40px"):
        got, want = (json.loads((tmp_path / d / sub / "compare.json").read_text()) for d in ("mixed", "live"))
        assert got["comparisons"] == want["comparisons"] and got["groups"] == want["groups"]
    with pytest.raises(FileNotFoundError, match=r"is an archived run .*use the run it was archived from"):
        evaluate_run(archived[0], n_boot=20, plots=False, cache_dir=cache, device="cpu")


def test_archived_runs_refuse_predictions_they_cannot_vouch_for(study_runs, tmp_path, monkeypatch):
    import shutil

    from popevit.evaluation.archive import archive_run
    from popevit.evaluation.study import run_study

    cache, runs = study_runs
    monkeypatch.setenv("POPEVIT_CACHE", str(cache))
    kw = {"n_boot": 20, "device": "cpu", "paired_tests": False}
    run = _make_run(tmp_path / "runs" / "pope-s0", "pope", 0, runs[0] / "manifest.csv")
    live = _make_run(tmp_path / "runs" / "rope_axial-s0", "rope_axial", 0, runs[0] / "manifest.csv")
    evaluate_run(run, n_boot=20, plots=False, cache_dir=cache, device="cpu")
    a = archive_run(run, tmp_path / "archive")
    # a size it does not hold is refused before the live run is evaluated at that size
    with pytest.raises(ValueError, match=r"archived run .* no weights.*holds no evaluation 'test-56px'"):
        run_study([[live], [a]], sizes=[56], out=tmp_path / "s", **kw)
    assert not (live / "eval" / "test-56px").exists()
    with pytest.raises(FileNotFoundError, match="is an archived run already"):
        archive_run(a, tmp_path / "again")
    # re-archiving the same weights adds the evaluations made since
    evaluate_run(run, n_boot=20, plots=False, cache_dir=cache, device="cpu", img_size=40)
    assert sorted(json.loads((archive_run(run, a.parent) / "archive.json").read_text())["evaluations"]) == [
        "test",
        "test-40px",
    ]
    assert sorted(p.name for p in a.parent.iterdir()) == ["pope-s0"]  # no temp or backup left
    # but does not drop one the run no longer holds
    shutil.rmtree(run / "eval" / "test-40px")
    with pytest.raises(ValueError, match=r"holds evaluations that .* no longer has \(test-40px\)"):
        archive_run(run, a.parent)
    assert (a / "eval" / "test-40px" / "predictions.csv").is_file()
    # predictions "test" made on another manifest (one test image fewer) are archived, never passed off as the run's
    rows = (runs[0] / "manifest.csv").read_text().splitlines(keepends=True)
    other = tmp_path / "other.csv"
    other.write_text(
        "".join(rows[:1] + [r for r in rows[1:] if ",test," in r][1:] + [r for r in rows[1:] if ",test," not in r])
    )
    evaluate_run(run, manifest=other, out=run / "eval" / "test", n_boot=20, plots=False, cache_dir=cache, device="cpu")
    b = archive_run(run, tmp_path / "archive_b")
    with pytest.raises(ValueError, match=r"'test' was made on manifest other.csv .*not on the run's own manifest"):
        run_study([[b]], out=tmp_path / "s2", **kw)
    (b / "eval" / "test" / "predictions.csv").unlink()
    with pytest.raises(ValueError, match=r"the archive is incomplete \(test/predictions.csv missing\)"):
        run_study([[b]], out=tmp_path / "s3", **kw)
    # predictions of other weights are not archived, and an archive of other weights is not overwritten
    _make_run(tmp_path / "other", "pope", 1, runs[0] / "manifest.csv")
    for name in ("model.safetensors", "model.json"):  # the whole artefact: model.json records the weights' sha256
        shutil.copy(tmp_path / "other" / name, run / name)
    with pytest.raises(ValueError, match=r"other weights than .*re-run `popevit evaluate`"):
        archive_run(run, tmp_path / "archive2")
    assert not (tmp_path / "archive2").exists() or not any((tmp_path / "archive2").iterdir())
    shutil.rmtree(run / "eval")
    evaluate_run(run, n_boot=20, plots=False, cache_dir=cache, device="cpu")
    with pytest.raises(FileExistsError, match="is not an archive of"):
        archive_run(run, tmp_path / "archive")


def test_archives_pair_with_runs_on_a_copy_of_the_data_in_another_folder(
    study_runs, phantom_root, tmp_path, monkeypatch
):
    """Another machine keeps the data elsewhere: its split has other paths, so other bytes, but the same images."""
    import shutil

    from popevit.data import make_split, read_manifest
    from popevit.data.manifest import same_images
    from popevit.evaluation.archive import archive_run
    from popevit.evaluation.study import run_study

    cache, runs = study_runs
    monkeypatch.setenv("POPEVIT_CACHE", str(cache))
    here = runs[0] / "manifest.csv"
    moved = shutil.copytree(phantom_root, tmp_path / "elsewhere" / "phantoms")
    there = make_split(moved, tmp_path / "there.csv", seed=0, ratios=(0.5, 0.25, 0.25), cache_dir=cache)
    assert here.read_bytes() != there.read_bytes() and str(moved) in there.read_text()
    assert read_manifest(here).fingerprint() == read_manifest(there).fingerprint() is not None
    assert same_images(here, there)

    kw = {"n_boot": 50, "device": "cpu"}
    run = _make_run(tmp_path / "runs" / "pope-s0", "pope", 0, here)
    evaluate_run(run, n_boot=20, plots=False, cache_dir=cache, device="cpu")
    archived = archive_run(run, tmp_path / "archive")
    shutil.rmtree(run)
    # the same weights evaluated here and there: the archive pairs with both alike
    rope_here = _make_run(tmp_path / "here" / "rope_axial-s0", "rope_axial", 0, here)
    rope_there = _make_run(tmp_path / "there" / "rope_axial-s0", "rope_axial", 0, there)
    want = run_study([[archived], [rope_here]], out=tmp_path / "s_here", **kw)
    got = run_study([[archived], [rope_there]], out=tmp_path / "s_there", **kw)
    assert got["groups"] == want["groups"]
    cmp = [json.loads((tmp_path / d / "compare" / "compare.json").read_text()) for d in ("s_there", "s_here")]
    assert cmp[0]["comparisons"] == cmp[1]["comparisons"]
    # named with --manifest, the other machine's split stands for the archive's own: the same study again
    named = run_study([[archived], [rope_there]], manifest=there, out=tmp_path / "s_named", **kw)
    assert named["groups"] == want["groups"] and (rope_there / "eval" / "there-test" / "predictions.csv").is_file()
    assert not (archived / "eval" / "there-test").exists()
    # the archive vouches for its predictions by content: the other machine's manifest has it, a changed split not
    from popevit.evaluation.archive import archived_stale, read_archive

    record, held = read_archive(archived), archived / "eval" / "test"
    assert archived_stale(record, held, data=None, manifest=there, split="test") is None
    rows = there.read_text().splitlines(keepends=True)
    i = next(n for n, r in enumerate(rows) if ",test," in r)
    rows[i] = rows[i].replace(",test,", ",train,")  # one test image moved into train
    changed = tmp_path / "changed.csv"
    changed.write_text("".join(rows))
    assert not same_images(here, changed)
    why = archived_stale(record, held, data=None, manifest=changed, split="test")
    assert why is not None and why.startswith("'test' was made on manifest manifest.csv") and "changed.csv" in why
    with pytest.raises(
        ValueError, match=r"archived run .*'test' was made on manifest manifest.csv .*, not on manifest .*changed.csv"
    ):
        run_study([[archived], [rope_there]], manifest=changed, out=tmp_path / "s_changed", **kw)
    assert not (rope_there / "eval" / "changed-test").exists()  # refused before the live run was evaluated


def test_a_two_stage_recipe_is_charged_its_teacher_or_pretraining(study_runs, tmp_path, monkeypatch):
    from popevit.evaluation.study import run_study

    cache, runs = study_runs
    monkeypatch.setenv("POPEVIT_CACHE", str(cache))
    groups = []
    for name, stages in (
        ("distilled", [{"role": "teacher", "wall_s": 600.0}, {"role": "init", "wall_s": 300.0}]),
        ("external", [{"role": "init", "wall_s": None}]),
        ("plain", []),
    ):
        run = _make_run(tmp_path / f"{name}-s0", "pope", 0, runs[0] / "manifest.csv")
        info = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**info, "upstream": stages}))
        groups.append([run])
    res = run_study(groups, out=tmp_path / "s", n_boot=20, device="cpu", paired_tests=False)
    distilled, external, plain = (g["cost"] for g in res["groups"])
    assert distilled["wall_min"] == 1.0 and distilled["upstream_wall_min"] == 15.0  # run.json: 60 s of its own
    assert distilled["upstream"] == ["init", "teacher"] and plain["upstream"] == []
    assert np.isnan(external["upstream_wall_min"])
    md = (tmp_path / "s" / "study.md").read_text()
    assert "| 16.0 (init + teacher 15.0) |" in md and "| 1.0 + ? (init: compute not recorded) |" in md
    assert "| 1.0 |" in md
    # img/s stays the stage's own speed
    assert distilled["train_img_per_s"] == plain["train_img_per_s"]
