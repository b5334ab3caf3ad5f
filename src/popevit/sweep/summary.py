"""Sweep summaries from the study alone: per-configuration mean +- sd over seeds (CSV + Markdown) and plots.

Each row of ``summary.csv`` is one configuration: its searched values, n (finished seeds), and mean and sample sd
(ddof = 1; empty when n = 1) of every recorded validation metric. ``trials.csv`` lists every trial. Plots come from
``optuna.visualization.matplotlib``: parameter importance (fANOVA, Hutter et al., ICML 2014) needs at least two
searched parameters, each seen with two values, and a handful of finished trials; parallel coordinates need two
finished trials. When a plot cannot be made, ``summary.md`` says why.
"""

from __future__ import annotations

import json
import math
import statistics
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from popevit.io import atomic_savefig, atomic_write_csv, atomic_write_text
from popevit.sweep.runner import OBJECTIVE, RECORDED, _redact
from popevit.sweep.space import SearchSpace

if TYPE_CHECKING:
    import optuna

METRIC_NAMES = {
    "val/auroc_macro": "val macro AUROC",
    "val/acc": "val accuracy",
    "val/bacc": "val balanced accuracy",
    "val/f1_macro": "val macro F1",
    "val/loss": "val loss",
}


def _mean_sd(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values) if values else math.nan
    sd = statistics.stdev(values) if len(values) > 1 else math.nan
    return mean, sd


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else str(value)


def configuration_table(study: optuna.Study, space: SearchSpace) -> list[dict[str, Any]]:
    """One row per configuration with finished trials, best mean objective first.

    Returns:
        Rows with the searched keys, ``n``, ``seeds``, ``<metric>_mean``/``<metric>_sd`` for every recorded metric
        and ``wall_s_mean``.
    """
    from optuna.trial import TrialState

    groups: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        groups.setdefault(t.user_attrs.get("config", json.dumps(t.params)), []).append(t)
    rows = []
    for trials in groups.values():
        trials.sort(key=lambda t: t.user_attrs.get("seed", 0))
        row: dict[str, Any] = {k: trials[0].params.get(k) for k in space.params}
        row["n"] = len(trials)
        row["seeds"] = " ".join(str(t.user_attrs.get("seed")) for t in trials)
        for metric in RECORDED:
            vals = [float(t.value) if metric == OBJECTIVE else t.user_attrs.get(metric) for t in trials]
            row[f"{metric}_mean"], row[f"{metric}_sd"] = _mean_sd([v for v in vals if v is not None])
        row["wall_s_mean"] = _mean_sd([t.user_attrs.get("wall_s", math.nan) for t in trials])[0]
        rows.append(row)
    rows.sort(key=lambda r: -r[f"{OBJECTIVE}_mean"] if not math.isnan(r[f"{OBJECTIVE}_mean"]) else math.inf)
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    atomic_write_csv(path, [columns, *([_cell(r.get(c)) for c in columns] for r in rows)])


def _trial_rows(study: optuna.Study, space: SearchSpace) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        if "duplicate_of" in t.user_attrs or t.state.name == "WAITING":
            continue
        row = {"number": t.number, "state": t.state.name, **{k: t.params.get(k) for k in space.params}}
        row.update({"seed": t.user_attrs.get("seed"), "value": t.value, "run_dir": t.user_attrs.get("run_dir")})
        row.update({m: t.user_attrs.get(m) for m in RECORDED if m != OBJECTIVE})
        row.update({k: t.user_attrs.get(k) for k in ("wall_s", "epochs", "error")})
        rows.append(row)
    return rows


def _pm(mean: float, sd: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.4f}" if math.isnan(sd) else f"{mean:.4f} ± {sd:.4f}"


def _markdown(
    study: optuna.Study, space: SearchSpace, rows: list[dict[str, Any]], notes: list[str], storage: str | None
) -> str:
    from optuna.trial import TrialState

    counts = {s.name: 0 for s in TrialState}
    for t in study.get_trials(deepcopy=False):
        if "duplicate_of" not in t.user_attrs:
            counts[t.state.name] += 1
    head = [
        f"# Sweep `{study.study_name}`",
        "",
        f"- storage: `{_redact(storage)}`" if storage else "- storage: in memory",
        f"- sampler: {'GridSampler' if space.mode == 'grid' else 'TPESampler'}; searched: "
        + ", ".join(f"`{k}`" for k in space.params)
        + f"; seeds: {', '.join(map(str, space.seeds))}",
        f"- objective: `{OBJECTIVE}` (maximised); mean ± sample sd over seeds, n = finished seeds",
        "- trials: " + ", ".join(f"{v} {k.lower()}" for k, v in counts.items() if v),
        "",
    ]
    metrics = [m for m in RECORDED if m != "val/loss"]
    cols = [*space.params, "n", *(METRIC_NAMES[m] for m in metrics)]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [_cell(r[k]) for k in space.params] + [str(r["n"])]
        cells += [_pm(r[f"{m}_mean"], r[f"{m}_sd"]) for m in metrics]
        lines.append("| " + " | ".join(cells) + " |")
    if rows:
        best = rows[0]
        sets = " ".join(f"--set {k}={best[k]}" for k in space.params)
        lines += ["", f"Best configuration (highest mean {METRIC_NAMES[OBJECTIVE]}): `{sets}`"]
    else:
        lines += ["", "No finished trials yet."]
    body = [*lines, "", "## Plots", ""]
    body += [f"![{n}]({n}.png)" for n in ("param_importances", "parallel_coordinate") if not _noted(n, notes)]
    body += [f"- {n}" for n in notes]
    return "\n".join(head + body) + "\n"


def _noted(kind: str, notes: list[str]) -> bool:
    return any(n.startswith(kind) for n in notes)


def _plot(kind: str, study: optuna.Study, params: list[str], out: Path) -> None:
    import matplotlib.pyplot as plt
    import optuna

    fn = {
        "param_importances": optuna.visualization.matplotlib.plot_param_importances,
        "parallel_coordinate": optuna.visualization.matplotlib.plot_parallel_coordinate,
    }[kind]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = fn(study, params=params)
    fig = ax.figure if hasattr(ax, "figure") else ax[0].figure
    fig.set_size_inches(8, 5)
    fig.tight_layout()
    atomic_savefig(fig, out / f"{kind}.png", dpi=120)
    plt.close(fig)


def write_summary(
    study: optuna.Study, space: SearchSpace, out: Path, storage: str | None = None
) -> tuple[dict[str, Path], list[str]]:
    """Write ``summary.csv``, ``summary.md``, ``trials.csv`` and the plots into ``out``.

    Args:
        study: the sweep's study.
        space: its search space (names the parameter columns).
        out: sweep folder.
        storage: the storage URL, shown without its password.

    Returns:
        ``{name: path}`` of the files written, and notes on plots that could not be made.
    """
    from optuna.trial import TrialState

    out = Path(out)
    rows = configuration_table(study, space)
    metric_cols = [f"{m}_{s}" for m in RECORDED for s in ("mean", "sd")]
    files = {"summary.csv": out / "summary.csv", "summary.md": out / "summary.md", "trials.csv": out / "trials.csv"}
    _write_csv(files["summary.csv"], rows, [*space.params, "n", "seeds", *metric_cols, "wall_s_mean"])
    extra = ["wall_s", "epochs", "run_dir", "error"]
    trial_cols = ["number", "state", *space.params, "seed", "value", *RECORDED[1:], *extra]
    _write_csv(files["trials.csv"], _trial_rows(study, space), trial_cols)

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    notes: list[str] = []
    seen = {k: len({json.dumps(t.params.get(k)) for t in done}) for k in space.params}
    varied = [k for k, n in seen.items() if n >= 2]
    need = max(4, len(space.params) + 2)
    if len(space.params) < 2:
        notes.append(f"param_importances: skipped, it needs >= 2 searched parameters (got {space.params})")
    elif len(varied) < 2 or len(done) < need:
        notes.append(
            f"param_importances: skipped, it needs >= 2 parameters seen with >= 2 values and >= {need} finished "
            f"trials (have {len(done)} finished; parameters with >= 2 values: {varied})"
        )
    else:
        _try_plot("param_importances", study, varied, out, files, notes)
    if len(done) < 2:
        notes.append(f"parallel_coordinate: skipped, it needs >= 2 finished trials (have {len(done)})")
    else:
        _try_plot("parallel_coordinate", study, space.params, out, files, notes)
    atomic_write_text(files["summary.md"], _markdown(study, space, rows, notes, storage))
    return files, notes


def _try_plot(
    kind: str, study: optuna.Study, params: list[str], out: Path, files: dict[str, Path], notes: list[str]
) -> None:
    try:
        _plot(kind, study, params, out)
        files[f"{kind}.png"] = out / f"{kind}.png"
    except (ValueError, RuntimeError, ZeroDivisionError) as err:  # e.g. fANOVA on constant objectives
        notes.append(f"{kind}: not drawn ({type(err).__name__}: {err})")
