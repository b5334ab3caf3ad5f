"""``run_sweep`` on phantoms: one run folder per trial, failed trials retried, finished ones never retrained, TPE
proposals trained once per seed, and the CLI's argument handling."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import optuna
import pytest
import typer
from sweep_tiny import TINY
from typer.testing import CliRunner

from popevit.cli.sweep import sweep
from popevit.data import make_split
from popevit.sweep import SearchSpace, SweepSpec, run_sweep


@pytest.fixture(scope="module")
def grid_sweep(phantom_root, tmp_path_factory):
    """A 2x1 grid whose first invocation finds no images (both trials fail), then two more invocations."""
    tmp = tmp_path_factory.mktemp("grid")
    data = tmp / "data"
    shutil.copytree(phantom_root, data)
    manifest = make_split(data, tmp / "manifest.csv", seed=0)
    sets = [*TINY, f"data.manifest={manifest}", f"data.cache_dir={tmp / 'cache'}"]
    space = SearchSpace.from_specs(["optim.lr=1e-3,3e-3"], [], [0])
    spec = SweepSpec(None, sets, space, tmp / "sweep", settle_s=0.0)
    data.rename(tmp / "away")
    first = run_sweep(spec)
    (tmp / "away").rename(data)
    second = run_sweep(spec)
    third = run_sweep(spec)
    return spec, (first, second, third)


def _study(spec: SweepSpec, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{spec.out / 'sweep.db'}")


def test_failed_trials_are_retried_and_finished_ones_are_not_retrained(grid_sweep):
    spec, (first, second, third) = grid_sweep
    assert (first.failed, first.trained, first.complete) == (2, 0, 0)
    assert (second.failed, second.trained, second.complete) == (0, 2, 2)
    assert (third.failed, third.trained, third.reused, third.complete) == (0, 0, 0, 2)
    study = _study(spec, third.study_name)
    states = [t.state.name for t in study.trials]
    assert states == ["FAIL", "FAIL", "COMPLETE", "COMPLETE"]
    retried = {t.user_attrs["retry_of"] for t in study.trials if t.state.name == "COMPLETE"}
    assert retried == {0, 1}
    errors = [t.user_attrs["error"] for t in study.trials if t.state.name == "FAIL"]
    assert all("ValueError" in e and "no usable training images" in e for e in errors), errors


def test_each_trial_is_a_normal_run_folder_with_its_own_config(grid_sweep):
    spec, (*_, last) = grid_sweep
    study = _study(spec, last.study_name)
    for t in study.trials:
        if t.state.name != "COMPLETE":
            continue
        run = Path(t.user_attrs["run_dir"])
        assert run.parent == spec.out.resolve() and run.name == f"lr-{t.params['optim.lr']:g}_seed-0"
        assert {"config.yaml", "manifest.csv", "model.safetensors", "val_metrics.json", "run.json"} <= {
            p.name for p in run.iterdir()
        }
        assert f"lr: {t.params['optim.lr']}" in (run / "config.yaml").read_text()
        assert json.loads((run / "val_metrics.json").read_text())["val/auroc_macro"] == pytest.approx(t.value)
    assert (spec.out / "manifest.csv").read_bytes() == (spec.out.parent / "manifest.csv").read_bytes()


def test_summary_lists_each_configuration_and_explains_the_missing_importance_plot(grid_sweep):
    spec, (*_, last) = grid_sweep
    with (spec.out / "summary.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(float(r["optim.lr"]) for r in rows) == [1e-3, 3e-3] and {r["n"] for r in rows} == {"1"}
    assert float(rows[0]["val/auroc_macro_mean"]) >= float(rows[1]["val/auroc_macro_mean"])
    assert any("param_importances: skipped" in n for n in last.notes)
    assert (spec.out / "parallel_coordinate.png").is_file()
    assert "needs >= 2 searched parameters" in (spec.out / "summary.md").read_text()


def test_a_run_folder_holding_another_config_is_refused(grid_sweep, tmp_path):
    spec, _ = grid_sweep
    other = SweepSpec(
        None, [*spec.overrides, "optim.weight_decay=0.5"], spec.space, spec.out, study_name="other", settle_s=0.0
    )
    result = run_sweep(other, summarize=False)
    assert result.failed == 2 and result.trained == 0
    study = _study(spec, "other")
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    assert all("holds a run with another config" in t.user_attrs["error"] for t in study.trials)


def _cli(*args: str):
    app = typer.Typer()
    app.command()(sweep)
    return CliRunner().invoke(app, list(args))


@pytest.mark.slow
def test_cli_tpe_trains_each_proposal_once_per_seed(phantom_root, tmp_path):
    sets = [a for s in [*TINY, f"data.cache_dir={tmp_path / 'cache'}"] for a in ("--set", s)]
    args = ["--data", str(phantom_root), "--range", "optim.lr=1e-4:1e-2:log", "--n-trials", "1", "--seeds", "0,1"]
    res = _cli(*args, "--out", str(tmp_path / "tpe"), "--study-name", "tpe", *sets)
    assert res.exit_code == 0, res.output
    assert "2/2 trials complete" in res.output and "trained 2" in res.output
    study = optuna.load_study(study_name="tpe", storage=f"sqlite:///{tmp_path / 'tpe' / 'sweep.db'}")
    lrs = {t.params["optim.lr"] for t in study.trials}
    assert len(study.trials) == 2 and len(lrs) == 1 and 1e-4 <= lrs.pop() <= 1e-2
    assert sorted(t.user_attrs["seed"] for t in study.trials) == [0, 1]
    with (tmp_path / "tpe" / "summary.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["n"] == "2" and row["seeds"] == "0 1" and float(row["val/auroc_macro_sd"]) >= 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--range", "optim.lr=1e-4:1e-2:log"], "needs --n-trials"),
        (["--grid", "optim.lr=1e-4,1e-3", "--n-trials", "3"], "--n-trials is for --range"),
        (["--grid", "optim.lrr=1e-4,1e-3"], "did you mean 'lr'"),
        (["--grid", "optim.lr=1e-4"], "postgresql+psycopg2"),
    ],
)
def test_cli_errors_name_the_fix(tmp_path, monkeypatch, args, message):
    monkeypatch.setenv("POPEVIT_DATA", str(tmp_path))  # a data folder is named, so the option error is the first
    extra = ["--storage", "postgresql+psycopg2://u:pw@localhost:1/db"] if message.startswith("postgresql") else []
    res = _cli(*args, *extra, "--out", str(tmp_path / "s"))
    assert res.exit_code == 2 and message in res.output, res.output
