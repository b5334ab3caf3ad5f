"""Grid sweeps with several workers: one grid order for all of them, and missing points are queued, not lost."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from popevit.sweep.runner import GRID_ORDER_SEED, _enqueue_grid_gaps
from popevit.sweep.space import SEED_KEY, SearchSpace, parse_grid, trial_key

GRID = {"model.pos_enc": ["none", "pope", "rope_axial"]}


def _space() -> SearchSpace:
    return SearchSpace(grid=dict([parse_grid("model.pos_enc=none,pope,rope_axial")]), seeds=[0, 1])


def test_grid_order_does_not_depend_on_the_worker():
    # two workers built their GridSamplers with different seeds before the fix: grid id k meant different points
    search = {**GRID, SEED_KEY: [0, 1]}
    a = optuna.samplers.GridSampler(search, seed=GRID_ORDER_SEED)
    b = optuna.samplers.GridSampler(search, seed=GRID_ORDER_SEED)
    assert a._all_grids == b._all_grids
    assert optuna.samplers.GridSampler(search, seed=1)._all_grids != a._all_grids  # what a per-worker seed did


def test_missing_grid_points_are_queued_and_then_drawn(tmp_path):
    space = _space()
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 's.db'}",
        sampler=optuna.samplers.GridSampler({**GRID, SEED_KEY: [0, 1]}, seed=GRID_ORDER_SEED),
        direction="maximize",
    )
    dists = {"model.pos_enc": CategoricalDistribution(GRID["model.pos_enc"]), SEED_KEY: CategoricalDistribution([0, 1])}
    held = [("none", 0), ("pope", 1), ("rope_axial", 0)]
    for pe, seed in held:
        key = trial_key({"model.pos_enc": pe}, seed)
        study.add_trial(create_trial(params={"model.pos_enc": pe, SEED_KEY: seed}, distributions=dists, value=0.5,
                                     user_attrs={"key": key}))  # fmt: skip
    # a pruned duplicate does not hold its point
    dup_key = trial_key({"model.pos_enc": "none"}, 1)
    dup = create_trial(
        params={"model.pos_enc": "none", SEED_KEY: 1},
        distributions=dists,
        state=TrialState.PRUNED,
        user_attrs={"key": dup_key},
    )
    study.add_trial(dup)
    assert _enqueue_grid_gaps(study, space) == 3
    waiting = [t.system_attrs["fixed_params"] for t in study.get_trials(states=(TrialState.WAITING,))]
    assert sorted((p["model.pos_enc"], p[SEED_KEY]) for p in waiting) == [("none", 1), ("pope", 0), ("rope_axial", 1)]
    drawn = []

    def objective(trial: optuna.Trial) -> float:
        drawn.append((trial.suggest_categorical("model.pos_enc", GRID["model.pos_enc"]),
                      trial.suggest_categorical(SEED_KEY, [0, 1])))  # fmt: skip
        trial.set_user_attr("key", trial_key({"model.pos_enc": drawn[-1][0]}, drawn[-1][1]))
        return 0.5

    study.optimize(objective, n_trials=3)
    assert sorted(drawn) == [("none", 1), ("pope", 0), ("rope_axial", 1)]  # the queued points, each once
    assert _enqueue_grid_gaps(study, space) == 0  # nothing left
