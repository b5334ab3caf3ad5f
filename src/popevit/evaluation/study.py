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

from popevit.evaluation.compare import (
    align,
    check_archived_runs,
    compare_runs,
    group_names,
    run_name,
    run_predictions,
)
from popevit.evaluation.evaluate import write_json
from popevit.evaluation.metrics import normalize_proba, percentile_ci, weighted_metrics
from popevit.evaluation.stats import bootstrap_seed_means
from popevit.io import atomic_savefig, atomic_write_csv, atomic_write_text, read_json
from popevit.progress import track

STUDY_METRICS = ("auroc_macro", "accuracy", "balanced_accuracy", "ece")
EXTRAPOLATION_METRICS = ("auroc_macro", "accuracy")


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
    from popevit.artifact import WEIGHTS, param_count
    from popevit.evaluation.archive import read_archive, train_images
    from popevit.training.run import stages_wall_s

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


def _fmt_ci(e: dict[str, float], digits: int = 3) -> str:
    return f"{e['value']:.{digits}f} [{e['lo']:.{digits}f}, {e['hi']:.{digits}f}] ± {e['sd']:.{digits}f}"


def _fmt_wall(cost: dict[str, Any]) -> str:
    """Wall minutes of a group's runs: the whole budget, and for a two-stage recipe what its earlier stages took."""
    if not cost.get("upstream"):
        return f"{cost['wall_min']:.1f}"
    roles = " + ".join(cost["upstream"])
    up = cost["upstream_wall_min"]
    if np.isnan(up):
        return f"{cost['wall_min']:.1f} + ? ({roles}: compute not recorded)"
    return f"{cost['wall_min'] + up:.1f} ({roles} {up:.1f})"


def to_markdown(result: dict[str, Any]) -> str:
    """The study as Markdown: the comparison table and the extrapolation table."""
    n, sizes = result["n"], result["sizes"]
    lines = [f"# Study on {n} test images ({result['source']})", ""]
    lines.append(
        "Each cell: seed-mean [95% bootstrap CI over test images] ± sd across seeds. "
        "Cost columns are seed means: wall time, epochs, training images seen (partial last epochs included) and "
        "img/s = training images seen per wall-clock second (validation included); capped = runs that the "
        "train.max_minutes cap ended; device as run.json records it. A two-stage recipe's wall time adds the stages "
        "it was built on (a distillation teacher, the pretraining behind --init) and shows them in brackets; its "
        "epochs, images and img/s are its own stage's."
    )
    lines.append("")
    lines.append(
        "| group | seeds | " + " | ".join(STUDY_METRICS) + " | params | wall min | epochs | images seen | train img/s "
        "| capped | device |"
    )
    lines.append("|---|---:|" + "---|" * len(STUDY_METRICS) + "---:|---:|---:|---:|---:|---:|---|")
    for g in result["groups"]:
        c = g["cost"]
        cells = [_fmt_ci(g["metrics"][m]) for m in STUDY_METRICS]
        lines.append(
            f"| {g['name']} | {len(g['runs'])} | " + " | ".join(cells) + f" | {c['params']:,} | {_fmt_wall(c)} | "
            f"{c['epochs']:.0f} | {c['images_seen']:,.0f} | {c['train_img_per_s']:.1f} | "
            f"{'?' if c['capped'] is None else c['capped']}/{len(g['runs'])} | {c['device']} |"
        )
    lines += [f"\n**Warning:** {w}" for w in result.get("warnings", [])]
    if len(sizes) > 1:
        lines += ["", f"## Resolution extrapolation: macro AUROC by test size (trained at {result['train_size']})", ""]
        lines.append("| group | " + " | ".join(f"{s} px" for s in sizes) + " |")
        lines.append("|---|" + "---|" * len(sizes))
        for g in result["groups"]:
            by = {e["size"]: e for e in g["extrapolation"]}
            lines.append(
                f"| {g['name']} | " + " | ".join(_fmt_ci(by[s]["metrics"]["auroc_macro"]) for s in sizes) + " |"
            )
    lines.append("")
    return "\n".join(lines)


def plot_extrapolation(result: dict[str, Any], path: Path, metric: str = "auroc_macro") -> Path:
    """Seed-mean ``metric`` vs test image size, one line per group, 95% CI as error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    offsets = np.linspace(-1.5, 1.5, len(result["groups"])) if len(result["groups"]) > 1 else [0.0]
    for off, g in zip(offsets, result["groups"], strict=True):
        xs = np.array([e["size"] for e in g["extrapolation"]], dtype=float)
        m = [e["metrics"][metric] for e in g["extrapolation"]]
        v = np.array([e["value"] for e in m])
        err = np.array([[e["value"] - e["lo"] for e in m], [e["hi"] - e["value"] for e in m]])
        ax.errorbar(xs + off, v, yerr=err, marker="o", capsize=3, label=g["name"])
    ax.axvline(result["train_size"], color="grey", ls=":", lw=1)
    ax.set_xlabel("test image size (px); dotted: training size")
    ax.set_ylabel(f"{metric} (seed mean, 95% CI)")
    ax.set_title("Resolution extrapolation")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=120)
    plt.close(fig)
    return path


def run_study(
    groups: Sequence[Sequence[str | Path]],
    *,
    sizes: Sequence[int] = (),
    manifest: str | Path | None = None,
    split: str = "test",
    out: str | Path,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 64,
    device: str | None = None,
    paired_tests: bool = True,
    calibrate: bool = False,
) -> dict[str, Any]:
    """Build the study table, the extrapolation curves and the paired tests; write them into ``out``.

    Args:
        groups: groups of run folders (one group per model, one run per seed), all trained at one image size.
        sizes: extra test image sizes for the extrapolation curves (the training size is always included).
        manifest: manifest CSV to evaluate on (default: each run's own ``manifest.csv``; they must share images).
        split: manifest split.
        out: output folder.
        n_boot: bootstrap resamples for every CI.
        seed: bootstrap seed.
        batch_size: inference batch size.
        device: torch device.
        paired_tests: also run ``popevit compare`` across the groups into ``out/compare`` (and ``out/compare-<size>px``
            for each extra size).
        calibrate: use temperature-scaled probabilities (``popevit evaluate --calibrate``: T fitted on each run's
            validation split); accuracy is unchanged, ECE and log loss are the calibrated ones.

    Returns:
        The study as a JSON-able dict (also written to ``out/study.json``).
    """
    from popevit.artifact import load_meta

    groups = [[Path(r) for r in g] for g in groups]
    if not groups or any(not g for g in groups):
        raise ValueError("study needs at least one non-empty group of run folders")
    flat = [r for g in groups for r in g]
    train_sizes = {load_meta(r).preprocess.img_size for r in flat}
    if len(train_sizes) != 1:
        raise ValueError(
            f"runs were trained at different image sizes {sorted(train_sizes)}; a study compares runs trained at one "
            "size (make one study per size)"
        )
    train_size = train_sizes.pop()
    all_sizes = sorted({train_size, *(int(s) for s in sizes)})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    kw = dict(
        manifest=manifest,
        split=split,
        n_boot=n_boot,
        seed=seed,
        batch_size=batch_size,
        device=device,
        calibrate=calibrate,
    )

    check_archived_runs(
        flat,
        manifest=manifest,
        split=split,
        img_sizes=[None, *(s for s in all_sizes if s != train_size)],
        calibrate=calibrate,
    )
    names = [str(r) for r in flat]
    runs = track(flat, f"{len(flat)} runs at {train_size} px")
    per_size = {train_size: align([run_predictions(r, **kw) for r in runs], names)}
    ref = per_size[train_size][0]
    for size in all_sizes:
        if size != train_size:  # on the training size's images, in its order: every curve shares one y
            preds = [run_predictions(r, img_size=size, **kw) for r in track(flat, f"{len(flat)} runs at {size} px")]
            per_size[size] = align([ref, *preds], [f"{names[0]} at {train_size} px", *names])[1:]
    y, classes = ref.y, ref.classes

    result: dict[str, Any] = {
        "n": len(y),
        "classes": classes,
        "source": f"{manifest or 'each run manifest.csv'}, split {split}"
        + (", temperature-scaled" if calibrate else ""),
        "train_size": train_size,
        "sizes": all_sizes,
        "bootstrap": {"n_boot": n_boot, "seed": seed, "level": 0.95, "statistic": "seed mean"},
        "groups": [],
    }
    k = 0
    machines: dict[str, set[str]] = {}
    for g, name in zip(groups, group_names(groups), strict=True):
        idx = list(range(k, k + len(g)))
        k += len(g)
        costs = [run_cost(r) for r in g]
        machines[name] = {c["machine"] for c in costs if c["machine"]}
        entry: dict[str, Any] = {
            "name": name,
            "runs": [run_name(r) for r in g],
            "metrics": seed_mean_with_ci(
                y, [per_size[train_size][i].proba for i in idx], classes, n_boot=n_boot, seed=seed
            ),
            "cost": {
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
                "capped": None
                if any(c["hit_time_cap"] is None for c in costs)
                else sum(c["hit_time_cap"] for c in costs),
            },
            "extrapolation": [],
        }
        for size in all_sizes:
            if size == train_size:  # the table's own intervals (same resamples), not a second bootstrap
                m = {k: entry["metrics"][k] for k in EXTRAPOLATION_METRICS}
                entry["extrapolation"].append({"size": size, "metrics": m})
                continue
            m = seed_mean_with_ci(
                y,
                [per_size[size][i].proba for i in idx],
                classes,
                metrics=EXTRAPOLATION_METRICS,
                n_boot=n_boot,
                seed=seed,
            )
            entry["extrapolation"].append({"size": size, "metrics": m})
        result["groups"].append(entry)

    warning = machine_warning(machines)
    if warning is not None:
        result["warnings"] = [warning]
    write_json(out / "study.json", result)
    atomic_write_text(out / "study.md", to_markdown(result))
    rows = [["group", "seeds", "metric", "test_size", "value", "lo", "hi", "sd"]]
    for g in result["groups"]:
        for m, e in g["metrics"].items():
            rows.append([g["name"], len(g["runs"]), m, train_size, e["value"], e["lo"], e["hi"], e["sd"]])
        for ex in g["extrapolation"]:
            if ex["size"] == train_size:
                continue
            for m, e in ex["metrics"].items():
                rows.append([g["name"], len(g["runs"]), m, ex["size"], e["value"], e["lo"], e["hi"], e["sd"]])
    atomic_write_csv(out / "study.csv", rows)
    if len(all_sizes) > 1:
        result["plot"] = str(plot_extrapolation(result, out / "extrapolation.png"))
    if paired_tests and len(groups) > 1:
        # at the training size, then the same tests at each extra size: is one encoding's extrapolation better?
        for size in all_sizes:
            extra = size != train_size
            folder = out / (f"compare-{size}px" if extra else "compare")
            compare_runs(groups, out=folder, img_size=size if extra else None, **kw)
            if extra:
                result.setdefault("compare_sizes", []).append(str(folder / "compare.md"))
            else:
                result["compare"] = str(folder / "compare.md")
    return result
