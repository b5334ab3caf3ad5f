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

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from popevit import progress
from popevit.config import ExperimentConfig, dump_config, load_config
from popevit.io import read_json
from popevit.sweep.space import SEED_KEY, SPLIT_KEYS, SearchSpace, config_id, overrides_for, run_name, trial_key

GRID_ORDER_SEED = 0

if TYPE_CHECKING:
    import optuna


OBJECTIVE = "val/auroc_macro"
# Validation metrics copied into each trial's user attributes, so the summary needs only the storage.
RECORDED = ("val/auroc_macro", "val/acc", "val/bacc", "val/f1_macro", "val/loss")


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


def default_storage(out: Path) -> str:
    return f"sqlite:///{out.resolve() / 'sweep.db'}"


def open_storage(url: str, heartbeat_s: int = 30, grace_s: int = 120) -> optuna.storages.RDBStorage:
    """Optuna RDB storage with heartbeats (killed trials are failed after ``grace_s``) and retries of stale trials.

    Args:
        url: SQLAlchemy URL: ``sqlite:///path.db`` or ``postgresql://user:password@host:5432/db``.
        heartbeat_s: how often a running trial touches the storage.
        grace_s: age of the last heartbeat after which a running trial counts as killed.

    Returns:
        The storage. PostgreSQL needs a driver: ``psycopg[binary]`` for ``postgresql://`` (SQLAlchemy 2's
        default), ``psycopg2-binary`` for ``postgresql+psycopg2://``.
    """
    import optuna

    if grace_s <= heartbeat_s:
        raise ValueError(f"grace period ({grace_s} s) must exceed the heartbeat interval ({heartbeat_s} s)")
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}  # wait for another worker's write instead of failing
    else:
        engine_kwargs["pool_pre_ping"] = True
    import sqlalchemy.exc

    try:
        for attempt in range(3):
            try:
                with _quiet_experimental():
                    return optuna.storages.RDBStorage(
                        url,
                        engine_kwargs=engine_kwargs,
                        heartbeat_interval=heartbeat_s,
                        grace_period=grace_s,
                        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
                    )
            except sqlalchemy.exc.SQLAlchemyError:
                if attempt == 2:  # workers that start together race to create the schema; the loser retries
                    raise
                time.sleep(1.0 + attempt)
        raise AssertionError("unreachable")
    except ImportError as err:
        raise RuntimeError(
            f"storage {_redact(url)!r}: its database driver is not installed ({err}). For postgresql:// install "
            "psycopg[binary] (SQLAlchemy's default PostgreSQL driver), for postgresql+psycopg2:// install "
            "psycopg2-binary; or use --storage sqlite:///sweep.db on one machine"
        ) from None


@contextlib.contextmanager
def _quiet_experimental() -> Iterator[None]:
    """Silence Optuna's notices that heartbeats and stale-trial retries are 'experimental' (stable since v2.8)."""
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield


def _redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}:***@{host}"
    return url


def _states() -> Any:
    from optuna.trial import TrialState

    return TrialState


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
    from popevit.training.run import prepare_manifest

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
    S = _states()
    holding = (S.COMPLETE, S.RUNNING, S.WAITING, S.FAIL)
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
    S = _states()
    held = {t.user_attrs.get("key") for t in _trials(study) if t.state in (S.COMPLETE, S.RUNNING, S.WAITING)}
    todo: dict[str, optuna.trial.FrozenTrial] = {}
    for t in _trials(study):
        key = t.user_attrs.get("key")
        if t.state == S.FAIL and key is not None and key not in held:
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
    S = _states()
    trials = _trials(study)
    waiting = sum(t.state == S.WAITING for t in trials)
    running = sum(t.state == S.RUNNING for t in trials)
    complete = sum(t.state == S.COMPLETE for t in trials)
    if spec.space.mode == "grid":
        started = {
            t.system_attrs["grid_id"]
            for t in trials
            if "grid_id" in t.system_attrs and (t.state.is_finished() or t.state == S.RUNNING)
        }
        to_start = grid_sampler._n_min_trials - len(started)
    else:
        configs = {
            t.user_attrs["config"] for t in trials if "config" in t.user_attrs and "duplicate_of" not in t.user_attrs
        }
        to_start = max(0, (spec.n_trials or 0) - len(configs))
    return _Work(waiting, to_start, running, complete)


class _Objective:
    """Train one trial's configuration into its run folder and return its validation macro AUROC."""

    def __init__(self, spec: SweepSpec, base_overrides: list[str], result: SweepResult) -> None:
        self.spec, self.base_overrides, self.result = spec, base_overrides, result

    def _suggest(self, trial: optuna.Trial) -> tuple[dict[str, Any], int]:
        space = self.spec.space
        params: dict[str, Any] = {k: trial.suggest_categorical(k, v) for k, v in space.grid.items()}
        for k, r in space.ranges.items():
            if r.integer:
                params[k] = trial.suggest_int(k, int(r.low), int(r.high), log=r.log)
            else:
                params[k] = trial.suggest_float(k, r.low, r.high, log=r.log)
        if space.mode == "grid":
            return params, int(trial.suggest_categorical(SEED_KEY, space.seeds))
        seed = trial.user_attrs.get("seed")
        if seed is None:  # a fresh TPE proposal: train it with the first seed, enqueue the other seeds
            seed = space.seeds[0]
            for s in space.seeds[1:]:
                trial.study.enqueue_trial(params, user_attrs={"seed": s})
        return params, int(seed)

    def _duplicate_of(self, trial: optuna.Trial, key: str) -> int | None:
        """Another trial holding ``key``: complete, or running and (lower-numbered or already training)."""
        S = _states()
        for t in _trials(trial.study):
            if t.number == trial.number or t.user_attrs.get("key") != key:
                continue
            if t.state == S.COMPLETE:
                return t.number
            if t.state == S.RUNNING and (t.number < trial.number or t.user_attrs.get("training")):
                return t.number
        return None

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        params, seed = self._suggest(trial)
        key = trial_key(params, seed)
        for name, value in (("key", key), ("config", config_id(params)), ("seed", seed)):
            trial.set_user_attr(name, value)
        time.sleep(self.spec.settle_s)
        dup = self._duplicate_of(trial, key)
        if dup is not None:
            trial.set_user_attr("duplicate_of", dup)
            raise optuna.TrialPruned(f"trial {dup} already holds {key}")
        trial.set_user_attr("training", True)

        cfg = load_config(self.spec.config, [*self.base_overrides, *overrides_for(params, seed)])
        run_dir = self.spec.out / run_name(params, seed)
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        try:
            metrics, wall, epochs = self._run(cfg, run_dir, trial.number)
        except Exception as err:  # recorded for trials.csv; Optuna marks the trial FAIL and the sweep goes on
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:2000])
            print(f"[sweep] trial {trial.number} failed: {type(err).__name__}: {err}", flush=True)
            raise
        value = metrics.get(OBJECTIVE, math.nan)
        for name in RECORDED:
            if name in metrics:
                trial.set_user_attr(name, float(metrics[name]))
        trial.set_user_attr("wall_s", round(wall, 2))
        trial.set_user_attr("epochs", epochs)
        if not math.isfinite(value):
            raise RuntimeError(f"trial {trial.number}: {OBJECTIVE} is {value} (see {run_dir}/val_metrics.json)")
        return float(value)

    def _run(self, cfg: ExperimentConfig, run_dir: Path, number: int) -> tuple[dict[str, float], float, int]:
        from popevit.training import RunDirError, train

        text = dump_config(cfg)
        saved = run_dir / "config.yaml"
        if saved.is_file() and saved.read_text() != text:
            raise RunDirError(
                f"{str(run_dir)!r} holds a run with another config (another sweep in the same --out?); "
                "use a fresh --out for a different sweep"
            )
        if (run_dir / "val_metrics.json").is_file() and (run_dir / "model.safetensors").is_file():
            metrics = read_json(run_dir / "val_metrics.json", "val_metrics.json of a run")
            info = read_json(run_dir / "run.json", "run.json of a run") if (run_dir / "run.json").is_file() else {}
            print(f"[sweep] trial {number}: reusing the finished run in {run_dir}", flush=True)
            self.result.reused += 1
            return metrics, float(info.get("wall_s", 0.0)), int(info.get("epochs", 0))
        resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
        if run_dir.exists() and not resume:
            shutil.rmtree(run_dir)  # a run killed before its first checkpoint: nothing to keep
        how = "resuming" if resume else "training"
        print(f"[sweep] trial {number}: {how} {run_dir.name}", flush=True)
        res = train(cfg, run_dir, resume=resume)
        self.result.trained += 1
        return res.val_metrics, res.wall_s, res.epochs


def run_sweep(spec: SweepSpec, *, summarize: bool = True) -> SweepResult:
    """Run (or continue) a sweep until this worker finds nothing left to start.

    Args:
        spec: the sweep.
        summarize: write the summary tables and plots into ``spec.out`` at the end.

    Returns:
        Counts of what this invocation trained, reused and saw fail, and the summary files.
    """
    import optuna

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
    grid_sampler = None
    if space.mode == "grid":
        # One grid order for every worker: a per-worker seed would map one grid id to different points in different
        # workers (duplicates and gaps). --sampler-seed is for TPE only.
        grid_sampler = optuna.samplers.GridSampler({**space.grid, SEED_KEY: space.seeds}, seed=GRID_ORDER_SEED)
        sampler: optuna.samplers.BaseSampler = grid_sampler
    else:
        sampler = optuna.samplers.TPESampler(
            seed=spec.sampler_seed, constant_liar=True, n_startup_trials=min(10, spec.n_trials or 10)
        )
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=sampler, direction="maximize", load_if_exists=True
    )
    _check_study(study, spec)
    result = SweepResult(study_name=name, storage=_redact(url))
    with _quiet_experimental():
        optuna.storages.fail_stale_trials(study)
    requeued = _requeue_failed(study)
    if requeued:
        print(f"[sweep] retrying {requeued} failed trial(s)", flush=True)

    objective = _Objective(spec, base_overrides, result)
    S = _states()
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
                if t.number not in before and t.state == S.FAIL:
                    result.failed += 1
        else:
            result.notes.append(f"stopped after {budget} trials in this invocation (most of them duplicates?)")

    final = _trials(study)
    result.complete = len({t.user_attrs.get("key") for t in final if t.state == S.COMPLETE})
    result.running_elsewhere = sum(t.state == S.RUNNING for t in final)
    result.expected = (space.n_grid if space.mode == "grid" else spec.n_trials or 0) * len(space.seeds)
    if result.running_elsewhere:
        result.notes.append(f"{result.running_elsewhere} trial(s) still running in other workers")
    if summarize:
        from popevit.sweep.summary import write_summary

        result.summary, notes = write_summary(study, space, spec.out, storage=url)
        result.notes += notes
    return result
