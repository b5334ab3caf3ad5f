"""Summaries from a study: mean +- sd over seeds per configuration, CSV/Markdown, plots or a note saying why not."""

from __future__ import annotations

import csv
import itertools
import statistics

import optuna
from optuna.distributions import CategoricalDistribution

from popevit.sweep.space import SEED_KEY, SearchSpace, config_id
from popevit.sweep.summary import configuration_table, write_summary


def _study(space: SearchSpace) -> tuple[optuna.Study, dict[str, list[float]]]:
    """A real in-memory study whose trials carry what ``run_sweep`` records (objective = a known function)."""
    study = optuna.create_study(direction="maximize")
    dists = {k: CategoricalDistribution(v) for k, v in space.grid.items()}
    dists[SEED_KEY] = CategoricalDistribution(space.seeds)
    truth: dict[str, list[float]] = {}
    for point, seed in itertools.product(space.grid_points(), space.seeds):
        value = 0.5 + 0.3 * point["model.dropout"] + 100 * point["optim.lr"] + 0.01 * seed
        truth.setdefault(config_id(point), []).append(value)
        attrs = {"config": config_id(point), "seed": seed, "val/acc": value / 2, "wall_s": 1.0}
        study.add_trial(
            optuna.create_trial(params={**point, SEED_KEY: seed}, distributions=dists, value=value, user_attrs=attrs)
        )
    return study, truth


def test_table_has_mean_and_sample_sd_over_seeds_best_first(tmp_path):
    space = SearchSpace.from_specs(["optim.lr=1e-4,1e-3", "model.dropout=0.1,0.2,0.5"], [], [0, 1, 2])
    study, truth = _study(space)
    rows = configuration_table(study, space)
    assert len(rows) == 6 and all(r["n"] == 3 for r in rows)
    means = [r["val/auroc_macro_mean"] for r in rows]
    assert means == sorted(means, reverse=True)
    best = rows[0]
    assert (best["optim.lr"], best["model.dropout"]) == (1e-3, 0.5)
    expected = truth[config_id({"optim.lr": 1e-3, "model.dropout": 0.5})]
    assert abs(best["val/auroc_macro_sd"] - statistics.stdev(expected)) < 1e-12
    assert abs(best["val/acc_mean"] - statistics.fmean(expected) / 2) < 1e-12

    files, notes = write_summary(study, space, tmp_path, storage="postgresql://me:secret@db/x")
    assert notes == []
    assert {"summary.csv", "summary.md", "trials.csv", "param_importances.png", "parallel_coordinate.png"} <= set(files)
    assert all(files[f"{k}.png"].stat().st_size > 10_000 for k in ("param_importances", "parallel_coordinate"))
    with (tmp_path / "summary.csv").open() as f:
        table = list(csv.DictReader(f))
    assert table[0]["optim.lr"] == "0.001" and table[0]["n"] == "3" and table[0]["seeds"] == "0 1 2"
    md = (tmp_path / "summary.md").read_text()
    assert "secret" not in md and "me:***@db" in md
    assert f"{statistics.fmean(expected):.4f} ± {statistics.stdev(expected):.4f}" in md
    assert "--set model.dropout=0.5 --set optim.lr=0.001" in md
    assert len((tmp_path / "trials.csv").read_text().splitlines()) == 1 + 18


def test_importance_degrades_with_a_note_for_one_parameter_and_sd_is_blank_for_one_seed(tmp_path):
    space = SearchSpace.from_specs(["optim.lr=1e-4,1e-3"], [], [0])
    study, _ = _study_one_param(space)
    files, notes = write_summary(study, space, tmp_path)
    assert "param_importances.png" not in files and "parallel_coordinate.png" in files
    assert len(notes) == 1 and "needs >= 2 searched parameters" in notes[0]
    md = (tmp_path / "summary.md").read_text()
    table = md.split("| optim.lr")[1].split("## Plots")[0]
    assert notes[0] in md and "±" not in table and "| 0.001 | 1 | 0.0010 |" in table


def _study_one_param(space: SearchSpace) -> tuple[optuna.Study, None]:
    study = optuna.create_study(direction="maximize")
    dists = {"optim.lr": CategoricalDistribution(space.grid["optim.lr"]), SEED_KEY: CategoricalDistribution([0])}
    for lr in space.grid["optim.lr"]:
        attrs = {"config": config_id({"optim.lr": lr}), "seed": 0}
        study.add_trial(
            optuna.create_trial(params={"optim.lr": lr, SEED_KEY: 0}, distributions=dists, value=lr, user_attrs=attrs)
        )
    return study, None
