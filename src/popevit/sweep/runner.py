"""Run a sweep as an Optuna study: one trial = one normal run directory, objective = validation macro AUROC.

Samplers (Akiba et al., "Optuna", KDD 2019, arXiv:1907.10902):

* grid mode (only ``--grid``): ``GridSampler`` over the grid values and the seeds (seeds are one more grid
  dimension, so every configuration is trained once per seed, each seed a separate trial);
* TPE mode (``--range`` with ``--n-trials``): ``TPESampler`` (Bergstra et al., NeurIPS 2011) with the constant
  liar for parallel workers proposes ``n_trials`` configurations; the sweep enqueues each proposal once per extra
  seed, so TPE mode is summarised per configuration exactly like a grid.

Re-running is cheap and safe. The study lives in an RDB storage (SQLite by default, PostgreSQL for several
machines); a finished trial is never retrained, and a run folder that already holds a finished run of the same
config is reused. Failed trials are retried on the next invocation, killed ones (their heartbeat stops) by any live
worker after the grace period; a retried run resumes from its ``checkpoints/last.ckpt`` when it has one.

Several workers (processes or machines) can share one study. Optuna's ``GridSampler`` hands trial number i the
grid point i, and falls back to a random unvisited point afterwards, where two workers can collide; every trial
therefore registers its exact (configuration, seed) key, waits ``settle_s`` and yields (state PRUNED, attribute
``duplicate_of``) when another worker holds the same key, so no training runs twice.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from popevit import progress
from popevit.config import ExperimentConfig, load_config
from popevit.sweep.space import SEED_KEY, SPLIT_KEYS, SearchSpace, overrides_for, trial_key
from popevit.sweep.storage import default_storage, open_storage, quiet_experimental, redact
from popevit.sweep.summary import write_summary
from popevit.sweep.trial import Objective
from popevit.training.rundir import prepare_manifest

GRID_ORDER_SEED = 0


@dataclass
class SweepSpec:
    """Everything one ``popevit sweep`` invocation needs.

    Attributes:
        config: experiment YAML (``None`` = defaults).
        overrides: ``--set key=value`` strings applied to every trial (before the searched values).
        space: what to search.
        out: sweep folder: one run folder per trial, ``manifest.csv``, ``sweep.db`` (default storage), summaries.
        storage: Optuna RDB URL (``sqlite:///sweep.db``, ``postgresql://user:pw@host/db``); default
            ``sqlite:///OUT/sweep.db``.
        study_name: default ``<config name>-<hash of the search space>``.
        n_trials: TPE mode: configurations to propose in the whole study (every worker counts).
        sampler_seed: seed of the TPE sampler's RNG (give each worker of one TPE study its own); grid sweeps use
            one fixed grid order in every worker.
        heartbeat_s: heartbeat interval of running trials.
        grace_s: a running trial whose heartbeat is older than this is failed (and retried).
        settle_s: wait between registering a trial's key and checking it for duplicates.
    """

    config: Path | None
    overrides: list[str]
    space: SearchSpace
    out: Path
    storage: str | None = None
    study_name: str | None = None
    n_trials: int | None = None
    sampler_seed: int = 0
    heartbeat_s: int = 30
    grace_s: int = 120
    settle_s: float = 1.0


@dataclass
class SweepResult:
    """What one invocation did and where the study stands."""

    study_name: str
    storage: str
    trained: int = 0
    reused: int = 0
    failed: int = 0
    complete: int = 0
    expected: int | None = None
    running_elsewhere: int = 0
    summary: dict[str, Path] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _validate(spec: SweepSpec) -> ExperimentConfig:
    """Load the base config and every grid point (and range end), so a typo fails before any training."""
    base = load_config(spec.config, spec.overrides)
    space = spec.space
    points = list(space.grid_points()) if space.mode == "grid" else [{}]
    ends = [
        {k: int(v) if r.integer else v for k, r in space.ranges.items() for v in [getattr(r, end)]}
        for end in ("low", "high")
    ]
    if space.mode == "tpe":
        points = [{**{k: v[0] for k, v in space.grid.items()}, **e} for e in ends]
        points += [{k: v} for k, vs in space.grid.items() for v in vs]
    for p in points:
        load_config(spec.config, [*spec.overrides, *overrides_for(p, space.seeds[0])])
    return base


def _shared_manifest(spec: SweepSpec, base: ExperimentConfig) -> list[str]:
    """One duplicate-grouped split for every trial (made once in OUT/manifest.csv) unless a split key is searched."""
    if getattr(base.data, "dataset", "folder") != "folder" or SPLIT_KEYS & set(spec.space.params):
        return []
    dest = spec.out / "manifest.csv"
    if not dest.is_file():  # split in a private folder, then publish atomically: workers may start together
        tmp = Path(tempfile.mkdtemp(prefix=".manifest-", dir=spec.out))
        try:
            os.replace(prepare_manifest(base, tmp), dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return [f"data.manifest={json.dumps(str(dest.resolve()))}", "data.data=null"]


def _check_study(study: optuna.Study, spec: SweepSpec) -> None:
    stored = study.user_attrs.get("space")
    if stored is None:
        study.set_user_attr("space", spec.space.to_json())
        study.set_user_attr("mode", spec.space.mode)
    elif stored != spec.space.to_json():
        raise ValueError(
            f"study {study.study_name!r} was created with another search space:\n  stored:    {stored}\n"
            f"  requested: {spec.space.to_json()}\nre-run with the same --grid/--range/--seeds, or pass another "
            "--study-name"
        )


def _trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False)


def _enqueue_grid_gaps(study: optuna.Study, space: SearchSpace) -> int:
    """Enqueue every grid point (with each seed) that no complete, running, waiting or failed trial holds.

    Failed points are not queued here: the next invocation retries them once (:func:`_requeue_failed`).

    Every grid id can be used up while points are still missing: a worker that died between drawing its id and
    recording its key, or studies started before the grid order was fixed across workers (two workers with
    different ``--sampler-seed`` drew the same points under different ids; the copies were pruned as duplicates).
    """
    holding = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL)
    held = {t.user_attrs.get("key") for t in _trials(study) if t.state in holding}
    gaps = [
        {**point, SEED_KEY: seed}
        for point in space.grid_points()
        for seed in space.seeds
        if trial_key(point, seed) not in held
    ]
    for params in gaps:
        study.enqueue_trial(params, user_attrs={"seed": params[SEED_KEY], "fills_gap": True})
    return len(gaps)


def _requeue_failed(study: optuna.Study) -> int:
    """Enqueue once each failed trial whose key has no complete, running or waiting successor."""
    live = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    held = {t.user_attrs.get("key") for t in _trials(study) if t.state in live}
    todo: dict[str, optuna.trial.FrozenTrial] = {}
    for t in _trials(study):
        key = t.user_attrs.get("key")
        if t.state == TrialState.FAIL and key is not None and key not in held:
            todo[key] = t
    for t in todo.values():
        study.enqueue_trial(t.params, user_attrs={"seed": t.user_attrs["seed"], "retry_of": t.number})
    return len(todo)


@dataclass
class _Work:
    waiting: int
    to_start: int
    running: int
    complete: int


def _work(study: optuna.Study, spec: SweepSpec, grid_sampler: Any) -> _Work:
    trials = _trials(study)
    waiting = sum(t.state == TrialState.WAITING for t in trials)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    if spec.space.mode == "grid":
        started = {
            t.system_attrs["grid_id"]
            for t in trials
            if "grid_id" in t.system_attrs and (t.state.is_finished() or t.state == TrialState.RUNNING)
        }
        to_start = grid_sampler._n_min_trials - len(started)
    else:
        configs = {
            t.user_attrs["config"] for t in trials if "config" in t.user_attrs and "duplicate_of" not in t.user_attrs
        }
        to_start = max(0, (spec.n_trials or 0) - len(configs))
    return _Work(waiting, to_start, running, complete)


def _sampler(spec: SweepSpec) -> optuna.samplers.BaseSampler:
    """Grid mode: one grid order for every worker (a per-worker seed would map one grid id to different points in
    different workers: duplicates and gaps); ``--sampler-seed`` is for TPE only."""
    space = spec.space
    if space.mode == "grid":
        return optuna.samplers.GridSampler({**space.grid, SEED_KEY: space.seeds}, seed=GRID_ORDER_SEED)
    return optuna.samplers.TPESampler(
        seed=spec.sampler_seed, constant_liar=True, n_startup_trials=min(10, spec.n_trials or 10)
    )


def run_sweep(spec: SweepSpec, *, summarize: bool = True) -> SweepResult:
    """Run (or continue) a sweep until this worker finds nothing left to start.

    Args:
        spec: the sweep.
        summarize: write the summary tables and plots into ``spec.out`` at the end.

    Returns:
        Counts of what this invocation trained, reused and saw fail, and the summary files.
    """
    space = spec.space
    if space.mode == "tpe" and not spec.n_trials:
        raise ValueError("--range searches with TPE and needs --n-trials N (the number of configurations to try)")
    if space.mode == "grid" and spec.n_trials:
        raise ValueError(
            f"--n-trials is for --range (TPE) searches; a grid runs all its {space.n_grid} configurations x "
            f"{len(space.seeds)} seeds"
        )
    spec.out = Path(spec.out)
    spec.out.mkdir(parents=True, exist_ok=True)
    base = _validate(spec)
    url = spec.storage or default_storage(spec.out)
    storage = open_storage(url, spec.heartbeat_s, spec.grace_s)
    base_overrides = [*spec.overrides, *_shared_manifest(spec, base)]
    name = spec.study_name or f"{base.name}-{space.digest()}"
    sampler = _sampler(spec)
    grid_sampler = sampler if space.mode == "grid" else None
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=sampler, direction="maximize", load_if_exists=True
    )
    _check_study(study, spec)
    result = SweepResult(study_name=name, storage=redact(url))
    with quiet_experimental():
        optuna.storages.fail_stale_trials(study)
    requeued = _requeue_failed(study)
    if requeued:
        print(f"[sweep] retrying {requeued} failed trial(s)", flush=True)

    objective = Objective(spec.config, base_overrides, space, spec.out, spec.settle_s)
    expected = (space.n_grid if space.mode == "grid" else spec.n_trials or 0) * len(space.seeds)
    budget = 10 * expected + 100
    with progress.bar(f"sweep {name}: trials complete", expected) as done:
        for _ in range(budget):
            work = _work(study, spec, grid_sampler)
            done(work.complete)
            if work.waiting == 0 and work.to_start <= 0 and space.mode == "grid" and _enqueue_grid_gaps(study, space):
                print("[sweep] grid ids used up with points missing: queued the missing points", flush=True)
                continue
            if work.waiting == 0 and work.to_start <= 0:
                break
            before = {t.number for t in _trials(study)}
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=True)
            for t in _trials(study):
                if t.number not in before and t.state == TrialState.FAIL:
                    result.failed += 1
        else:
            result.notes.append(f"stopped after {budget} trials in this invocation (most of them duplicates?)")

    result.trained, result.reused = objective.trained, objective.reused
    final = _trials(study)
    result.complete = len({t.user_attrs.get("key") for t in final if t.state == TrialState.COMPLETE})
    result.running_elsewhere = sum(t.state == TrialState.RUNNING for t in final)
    result.expected = (space.n_grid if space.mode == "grid" else spec.n_trials or 0) * len(space.seeds)
    if result.running_elsewhere:
        result.notes.append(f"{result.running_elsewhere} trial(s) still running in other workers")
    if summarize:
        result.summary, notes = write_summary(study, space, spec.out, storage=url)
        result.notes += notes
    return result
