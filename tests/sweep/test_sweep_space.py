"""Search-space parsing: grid and range specs, seeds, run-folder names and YAML round trips."""

from __future__ import annotations

import pytest
import yaml

from popevit.config import load_config
from popevit.sweep.space import SearchSpace, overrides_for, parse_grid, parse_range, run_name


def test_grid_values_are_typed_scalars():
    assert parse_grid("optim.lr=1e-4,3e-4,1e-3") == ("optim.lr", [1e-4, 3e-4, 1e-3])
    assert parse_grid("model.patch_size=8,16,32") == ("model.patch_size", [8, 16, 32])
    assert parse_grid("model.pool=cls,mean") == ("model.pool", ["cls", "mean"])
    assert parse_grid("optim.grad_clip=null,1.0") == ("optim.grad_clip", [None, 1.0])


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("optim.lr", "not key=values"),
        ("optim.lr=1e-4,1e-4", "repeats a value"),
        ("train.seed=0,1", "--seeds"),
        ("data.ratios=[0.8,0.1,0.1]", "scalar"),
        ("data.classes=[glioma]", "scalars"),
    ],
)
def test_bad_grid_specs_say_how_to_fix_them(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_grid(spec)


def test_ranges_parse_log_and_int_and_reject_bad_bounds():
    key, r = parse_range("optim.lr=1e-5:1e-2:log")
    assert key == "optim.lr" and (r.low, r.high, r.log, r.integer) == (1e-5, 1e-2, True, False)
    assert parse_range("model.patch_size=4:16:int")[1].integer
    for spec, match in [
        ("optim.lr=0:1e-2:log", "low > 0"),
        ("optim.lr=1e-2:1e-5", "below high"),
        ("optim.lr=1e-5:1e-2:cubic", "low:high"),
        ("model.patch_size=4.5:16:int", "integer bounds"),
    ]:
        with pytest.raises(ValueError, match=match):
            parse_range(spec)


def test_space_modes_and_duplicate_keys():
    grid = SearchSpace.from_specs(["optim.lr=1e-4,1e-3", "model.dropout=0.1,0.2,0.5"], [], [0, 1, 2])
    assert grid.mode == "grid" and grid.n_grid == 6 and grid.params == ["model.dropout", "optim.lr"]
    assert len(list(grid.grid_points())) == 6
    tpe = SearchSpace.from_specs(["model.dropout=0.1,0.2"], ["optim.lr=1e-5:1e-2:log"], [0])
    assert tpe.mode == "tpe"
    with pytest.raises(ValueError, match="searched twice"):
        SearchSpace.from_specs(["optim.lr=1e-4,1e-3"], ["optim.lr=1e-5:1e-2"], [0])
    with pytest.raises(ValueError, match="repeats a seed"):
        SearchSpace.from_specs(["optim.lr=1e-4,1e-3"], [], [0, 0])
    assert grid.digest() != SearchSpace.from_specs(["optim.lr=1e-4,1e-3"], [], [0, 1, 2]).digest()


def test_overrides_round_trip_exactly_through_the_config():
    params = {"optim.lr": 1e-05, "model.dropout": 0.1, "model.patch_size": 8, "model.pool": "mean"}
    cfg = load_config(None, overrides_for(params, 3))
    assert (cfg.optim.lr, cfg.model.dropout, cfg.model.patch_size, cfg.model.pool) == (1e-05, 0.1, 8, "mean")
    assert cfg.train.seed == 3
    assert yaml.safe_load(overrides_for({"optim.lr": 1e-05}, 0)[0].split("=", 1)[1]) == 1e-05


def test_run_names_are_readable_and_never_shared_by_distinct_trials():
    assert run_name({"optim.lr": 3e-4, "model.dropout": 0.1}, 0) == "dropout-0.1_lr-0.0003_seed-0"
    a = run_name({"optim.lr": 0.000123451}, 0)
    b = run_name({"optim.lr": 0.000123452}, 0)
    assert a != b and a.startswith("lr-0.0001235_")
    assert run_name({"optim.lr": 3e-4}, 0) != run_name({"optim.lr": 3e-4}, 1)
    assert run_name({"a.lr": 1, "b.lr": 1}, 0) != run_name({"a.lr": 1, "c.lr": 1}, 0)
