"""``popevit study``: the multi-seed comparison table and the resolution-extrapolation curves of a set of run groups.

Given run folders grouped by name with the seed suffix removed (``pos_enc-pope_seed-0``, ``-1``, ``-2`` form the
group ``pos_enc-pope``, see :func:`popevit.evaluation.compare.group_runs`), this writes:

- ``study.md`` / ``study.csv``: one row per group with the seed-mean of macro AUROC, accuracy, balanced accuracy
  and ECE on the shared test images, each with a 95% CI, the across-seed standard deviation, the parameter count
  and the training cost (wall time, epochs, training images per second of wall time, validation included);
- ``extrapolation.csv`` / ``extrapolation.png``: the same seed-mean macro AUROC and accuracy when every model is fed
  larger images than it was trained on (``sizes``), one curve per group;
- ``compare/``: the paired tests between every pair of groups at the training size (``popevit compare``), and
  ``compare-<size>px/`` the same at each extra size.

CI of a seed-mean: every bootstrap resample draws the test images once and evaluates every run of the group on it,
then averages over seeds (the same construction as :func:`popevit.evaluation.stats.paired_bootstrap`). It therefore
measures test-set sampling of the seed-averaged model; the seed-to-seed spread is reported beside it as ``sd``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from popevit.artifact import WEIGHTS, load_meta, param_count
from popevit.evaluation.archive import read_archive, train_images
from popevit.evaluation.compare import align, compare_runs
from popevit.evaluation.evaluate import write_json
from popevit.evaluation.groups import group_names, run_name
from popevit.evaluation.metrics import (
    EXTRAPOLATION_METRICS,
    STUDY_METRICS,
    normalize_proba,
    percentile_ci,
    weighted_metrics,
)
from popevit.evaluation.prediction_cache import check_archived_runs, run_predictions
from popevit.evaluation.predictions import Predictions
from popevit.evaluation.render import plot_extrapolation, study_markdown
from popevit.evaluation.source import EvalSource
from popevit.evaluation.stats import bootstrap_seed_means
from popevit.io import atomic_write_csv, atomic_write_text, read_json
from popevit.progress import track
from popevit.training.budget import stages_wall_s


def seed_mean_with_ci(
    y: np.ndarray,
    probas: Sequence[np.ndarray],
    classes: Sequence[str],
    metrics: Sequence[str] = STUDY_METRICS,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, dict[str, float]]:
    """Seed-mean of each metric over the runs of one group, its percentile-bootstrap CI and the across-seed sd.

    Args:
        y: (n,) integer labels.
        probas: one (n, K) probability matrix per run (seed), rows aligned with ``y``.
        classes: K class names.
        metrics: keys of :func:`popevit.evaluation.metrics.metric_names`.
        n_boot: bootstrap resamples of the images (one resample is shared by every run).
        seed: resampling seed.
        level: confidence level.

    Returns:
        Metric -> ``{"value", "lo", "hi", "sd", "values"}`` (``values``: per run).
    """
    if not probas:
        raise ValueError("seed_mean_with_ci needs at least one run")
    probas = [normalize_proba(p) for p in probas]
    ones = np.ones((1, len(y)))
    per_run = [weighted_metrics(y, p, classes, ones) for p in probas]
    boot = bootstrap_seed_means(y, probas, classes, metrics, n_boot, seed)
    out: dict[str, dict[str, float]] = {}
    for m in metrics:
        values = [float(r[m][0]) for r in per_run]
        lo, hi = percentile_ci(boot[m], level)
        sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
        out[m] = {"value": float(np.mean(values)), "lo": lo, "hi": hi, "sd": sd, "values": values}
    return out


def _device(info: dict[str, Any]) -> str | None:
    """run.json's device, with the CPU model and its vector capability where recorded: a wall-clock budget on "2
    cores" means little without them (docs/experiments/pe_study_residual_stem.md)."""
    device, machine = info.get("device"), _machine(info)
    return f"{device}, {machine}" if machine and device.startswith("cpu") else device


def _machine(info: dict[str, Any]) -> str | None:
    """What a same-seed rerun would need to be the same model: the CPU model and its vector capability, or the GPU
    device; None for a CPU run recorded before ``run.json`` named its CPU."""
    device, cpu = info.get("device"), info.get("cpu")
    if not device or (device.startswith("cpu") and not cpu):
        return None
    return f"{cpu.get('model')} [{cpu.get('capability')}]" if device.startswith("cpu") else device


def run_cost(run: Path) -> dict[str, Any]:
    """Parameters, wall time, epochs, training images seen and per wall-clock second of a run folder."""
    info = read_json(run / "run.json", "run.json of a run") if (run / "run.json").is_file() else {}
    archived = read_archive(run)
    params = archived["params"] if archived is not None else param_count(run / WEIGHTS)
    n_train = 0
    if (run / "manifest.csv").is_file():
        n_train = train_images(run / "manifest.csv")
    elif archived is not None:
        n_train = archived["train_images"] or 0
    wall, epochs = info.get("wall_s"), info.get("epochs")
    seen = info.get("images_seen")  # counted, partial epochs included; runs made before it was recorded: estimated
    if seen is None and epochs and n_train:
        seen = n_train * epochs
    ips = seen / wall if wall and seen else float("nan")
    stages = info.get("upstream", [])
    return {
        "params": params,
        "wall_s": wall,
        # the stages it was built on (teacher, pretraining): their wall time, None when one of them is unknown
        "upstream_wall_s": stages_wall_s(stages),
        "upstream": [s["role"] for s in stages],
        "epochs": epochs,
        "images_seen": seen,
        "train_images": n_train,
        "train_img_per_s": ips,
        "device": _device(info),
        "machine": _machine(info),
        "hit_time_cap": info.get("hit_time_cap"),
    }


def machine_warning(machines: dict[str, set[str]]) -> str | None:
    """A warning when groups (name -> the machines their runs recorded) did not run on the same machines.

    A seed rerun on another CPU is another model, not a replica (docs/experiments/pe_study_residual_stem.md: up to 2.3
    points of accuracy on one seed, 1.1 on a 3-seed mean), so a difference between groups that ran on different machines
    mixes the model with the machine. Groups with no machine recorded (runs older than the record) are left out: nothing
    can be said.
    """
    known = {name: m for name, m in machines.items() if m}
    if len({frozenset(m) for m in known.values()}) <= 1:
        return None
    where = "; ".join(f"{name}: {' / '.join(sorted(m))}" for name, m in known.items())
    return (
        f"the groups ran on different machines ({where}). A run repeated on another machine is a different model, "
        "so a difference between these groups is partly one between machines: compare groups run on one machine, "
        "or give every group seeds on each."
    )


def _group_cost(costs: list[dict[str, Any]]) -> dict[str, Any]:
    """Seed means of a group's :func:`run_cost` records (NaN where a run did not record a figure)."""
    return {
        "params": costs[0]["params"],
        "wall_min": float(np.mean([c["wall_s"] or np.nan for c in costs])) / 60.0,
        # a two-stage recipe's whole budget: this stage plus its teacher or pretraining (NaN: unknown)
        "upstream": sorted({role for c in costs for role in c["upstream"]}),
        "upstream_wall_min": float(
            np.mean([np.nan if c["upstream_wall_s"] is None else c["upstream_wall_s"] for c in costs])
        )
        / 60.0,
        "epochs": float(np.mean([c["epochs"] or np.nan for c in costs])),
        "images_seen": float(np.mean([c["images_seen"] or np.nan for c in costs])),
        "train_img_per_s": float(np.mean([c["train_img_per_s"] for c in costs])),
        "device": " / ".join(sorted({c["device"] or "unknown" for c in costs})),
        # None when a run.json predates the record: the table shows "?", not a claim that no cap ended it
        "capped": None if any(c["hit_time_cap"] is None for c in costs) else sum(c["hit_time_cap"] for c in costs),
    }


def _train_size(runs: list[Path]) -> int:
    """The one image size every run was trained at."""
    train_sizes = {load_meta(r).preprocess.img_size for r in runs}
    if len(train_sizes) != 1:
        raise ValueError(
            f"runs were trained at different image sizes {sorted(train_sizes)}; a study compares runs trained at one "
            "size (make one study per size)"
        )
    return train_sizes.pop()


def _predictions_by_size(
    runs: list[Path], source: EvalSource, train_size: int, sizes: list[int], eval_kwargs: dict[str, Any]
) -> dict[int, list[Predictions]]:
    """Every run's predictions at every size, aligned on the training size's images and order (one ``y`` for all)."""
    names = [str(r) for r in runs]
    at_train = track(runs, f"{len(runs)} runs at {train_size} px")
    per_size = {train_size: align([run_predictions(r, source, **eval_kwargs) for r in at_train], names)}
    ref = per_size[train_size][0]
    for size in sizes:
        if size != train_size:
            at_size = track(runs, f"{len(runs)} runs at {size} px")
            preds = [run_predictions(r, source.at_size(size), **eval_kwargs) for r in at_size]
            per_size[size] = align([ref, *preds], [f"{names[0]} at {train_size} px", *names])[1:]
    return per_size


def _group_entry(
    name: str,
    runs: list[Path],
    probas: dict[int, list[np.ndarray]],
    y: np.ndarray,
    classes: list[str],
    train_size: int,
    n_boot: int,
    seed: int,
) -> tuple[dict[str, Any], set[str]]:
    """A group's row of the study (seed-mean metrics with CIs, cost, the same at each test size) and the machines
    its runs recorded. At the training size the extrapolation reuses the table's own intervals (same resamples)."""
    costs = [run_cost(r) for r in runs]
    metrics = seed_mean_with_ci(y, probas[train_size], classes, n_boot=n_boot, seed=seed)
    extrapolation = []
    for size, p in probas.items():
        if size == train_size:
            m = {k: metrics[k] for k in EXTRAPOLATION_METRICS}
        else:
            m = seed_mean_with_ci(y, p, classes, metrics=EXTRAPOLATION_METRICS, n_boot=n_boot, seed=seed)
        extrapolation.append({"size": size, "metrics": m})
    entry = {"name": name, "runs": [run_name(r) for r in runs], "metrics": metrics, "cost": _group_cost(costs)}
    entry["extrapolation"] = extrapolation
    return entry, {c["machine"] for c in costs if c["machine"]}


def _describe(source: EvalSource) -> str:
    """The images and treatment of a study, for its table's title."""
    where = source.data or source.manifest or "each run manifest.csv"
    extras = [
        ", test-time augmentation" if source.tta else "",
        f", label map {source.label_map}" if source.label_map else "",
        f", source {source.source_name}" if source.source_name else "",
        ", temperature-scaled" if source.calibrate else "",
    ]
    return f"{where}, split {source.split}" + "".join(extras)


def _write_csv(path: Path, result: dict[str, Any]) -> None:
    """``study.csv``: one row per group, metric and test size."""
    rows = [["group", "seeds", "metric", "test_size", "value", "lo", "hi", "sd"]]
    for g in result["groups"]:
        for m, e in g["metrics"].items():
            rows.append([g["name"], len(g["runs"]), m, result["train_size"], e["value"], e["lo"], e["hi"], e["sd"]])
        for ex in g["extrapolation"]:
            if ex["size"] == result["train_size"]:
                continue
            for m, e in ex["metrics"].items():
                rows.append([g["name"], len(g["runs"]), m, ex["size"], e["value"], e["lo"], e["hi"], e["sd"]])
    atomic_write_csv(path, rows)


def run_study(
    groups: Sequence[Sequence[str | Path]],
    source: EvalSource | None = None,
    *,
    sizes: Sequence[int] = (),
    out: str | Path,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
    device: str | None = None,
    paired_tests: bool = True,
    **source_fields: Any,
) -> dict[str, Any]:
    """Build the study table, the extrapolation curves and the paired tests; write them into ``out``.

    Args:
        groups: groups of run folders (one group per model, one run per seed), all trained at one image size.
        source: what to evaluate on (:class:`popevit.evaluation.source.EvalSource`; default each run's own
            ``manifest.csv``, which must then share images); with ``calibrate``, ECE and log loss are calibrated.
        sizes: extra test image sizes for the extrapolation curves (the training size is always included).
        out: output folder.
        n_boot: bootstrap resamples for every CI.
        seed: bootstrap seed.
        batch_size: inference batch size.
        device: torch device.
        paired_tests: also run ``popevit compare`` across the groups into ``out/compare`` (and ``out/compare-<size>px``
            for each extra size).
        **source_fields: the fields of ``source`` as keywords (``manifest=``, ``split=``, ...), instead of ``source``.

    Returns:
        The study as a JSON-able dict (also written to ``out/study.json``).
    """
    source = EvalSource.of(source, **source_fields)
    if source.img_size is not None:
        raise ValueError(f"a study sets the input sizes itself: pass sizes=[{source.img_size}], not img_size")
    groups = [[Path(r) for r in g] for g in groups]
    if not groups or any(not g for g in groups):
        raise ValueError("study needs at least one non-empty group of run folders")
    flat = [r for g in groups for r in g]
    train_size = _train_size(flat)
    all_sizes = sorted({train_size, *(int(s) for s in sizes)})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    eval_kwargs = {"n_boot": n_boot, "seed": seed, "batch_size": batch_size, "device": device}
    check_archived_runs(flat, source, img_sizes=[None, *(s for s in all_sizes if s != train_size)])
    per_size = _predictions_by_size(flat, source, train_size, all_sizes, eval_kwargs)
    y, classes = per_size[train_size][0].y, per_size[train_size][0].classes
    result: dict[str, Any] = {
        "n": len(y),
        "classes": classes,
        "source": _describe(source),
        "train_size": train_size,
        "sizes": all_sizes,
        "bootstrap": {"n_boot": n_boot, "seed": seed, "level": 0.95, "statistic": "seed mean"},
        "groups": [],
    }
    k, machines = 0, {}  # group name -> the machines its runs recorded
    for g, name in zip(groups, group_names(groups), strict=True):
        probas = {size: [p.proba for p in per_size[size][k : k + len(g)]] for size in all_sizes}
        k += len(g)
        entry, machines[name] = _group_entry(name, g, probas, y, classes, train_size, n_boot, seed)
        result["groups"].append(entry)
    if (warning := machine_warning(machines)) is not None:
        result["warnings"] = [warning]
    write_json(out / "study.json", result)
    atomic_write_text(out / "study.md", study_markdown(result))
    _write_csv(out / "study.csv", result)
    if len(all_sizes) > 1:
        result["plot"] = str(plot_extrapolation(result, out / "extrapolation.png"))
    if paired_tests and len(groups) > 1:
        # at the training size, then the same tests at each extra size: is one encoding's extrapolation better?
        for size in all_sizes:
            extra = size != train_size
            folder = out / (f"compare-{size}px" if extra else "compare")
            compare_runs(groups, source.at_size(size if extra else None), out=folder, **eval_kwargs)
            if extra:
                result.setdefault("compare_sizes", []).append(str(folder / "compare.md"))
            else:
                result["compare"] = str(folder / "compare.md")
    return result
