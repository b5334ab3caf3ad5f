"""One sweep trial: a configuration and a seed trained into a normal run folder, scored by validation macro AUROC.

The trial records its exact (configuration, seed) key and yields to any other trial that holds the same key (see
:mod:`popevit.sweep.runner`), reuses a finished run of the same config in its folder, and resumes a killed one from
its last checkpoint. What it records in the study (:data:`OBJECTIVE`, :data:`RECORDED`, wall time, epochs, the
error of a failed trial) is all that :mod:`popevit.sweep.summary` reads.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from popevit.config import ExperimentConfig, dump_config, load_config
from popevit.io import read_json
from popevit.sweep.space import SEED_KEY, SearchSpace, config_id, overrides_for, run_name, trial_key
from popevit.training import RunDirError, train

OBJECTIVE = "val/auroc_macro"
# Validation metrics copied into each trial's user attributes, so the summary needs only the storage.
RECORDED = ("val/auroc_macro", "val/acc", "val/bacc", "val/f1_macro", "val/loss")


class Objective:
    """Train one trial's configuration into its run folder and return its validation macro AUROC.

    Args:
        config: experiment YAML (``None`` = defaults).
        overrides: ``key=value`` overrides applied to every trial before its searched values.
        space: the search space.
        out: sweep folder (one run folder per trial).
        settle_s: wait between registering a trial's key and checking it for duplicates.

    Attributes ``trained`` and ``reused`` count what this worker trained and found finished.
    """

    def __init__(self, config: Path | None, overrides: list[str], space: SearchSpace, out: Path, settle_s: float):
        self.config, self.overrides, self.space, self.out, self.settle_s = config, overrides, space, out, settle_s
        self.trained = 0
        self.reused = 0

    def _suggest(self, trial: optuna.Trial) -> tuple[dict[str, Any], int]:
        space = self.space
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

    @staticmethod
    def _duplicate_of(trial: optuna.Trial, key: str) -> int | None:
        """Another trial holding ``key``: complete, or running and (lower-numbered or already training)."""
        for t in trial.study.get_trials(deepcopy=False):
            if t.number == trial.number or t.user_attrs.get("key") != key:
                continue
            if t.state == TrialState.COMPLETE:
                return t.number
            if t.state == TrialState.RUNNING and (t.number < trial.number or t.user_attrs.get("training")):
                return t.number
        return None

    def __call__(self, trial: optuna.Trial) -> float:
        params, seed = self._suggest(trial)
        key = trial_key(params, seed)
        for name, value in (("key", key), ("config", config_id(params)), ("seed", seed)):
            trial.set_user_attr(name, value)
        time.sleep(self.settle_s)
        dup = self._duplicate_of(trial, key)
        if dup is not None:
            trial.set_user_attr("duplicate_of", dup)
            raise optuna.TrialPruned(f"trial {dup} already holds {key}")
        trial.set_user_attr("training", True)

        cfg = load_config(self.config, [*self.overrides, *overrides_for(params, seed)])
        run_dir = self.out / run_name(params, seed)
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
            self.reused += 1
            return metrics, float(info.get("wall_s", 0.0)), int(info.get("epochs", 0))
        resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
        if run_dir.exists() and not resume:
            shutil.rmtree(run_dir)  # a run killed before its first checkpoint: nothing to keep
        how = "resuming" if resume else "training"
        print(f"[sweep] trial {number}: {how} {run_dir.name}", flush=True)
        res = train(cfg, run_dir, resume=resume)
        self.trained += 1
        return res.val_metrics, res.wall_s, res.epochs
