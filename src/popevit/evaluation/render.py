"""Rendering of comparison and study results: Markdown tables and the resolution-extrapolation figure.

Every function here reads the JSON-able result that :mod:`popevit.evaluation.compare` or
:mod:`popevit.evaluation.study` computed and writes nothing else; the numbers are never recomputed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from popevit.evaluation.metrics import STUDY_METRICS, SUMMARY_METRICS, with_tumor_metrics
from popevit.io import atomic_savefig


def _fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def compare_markdown(result: dict[str, Any]) -> str:
    """A comparison (:func:`popevit.evaluation.compare.compare_runs`) as Markdown tables."""
    size = result.get("source", {}).get("img_size")
    lines = [f"# Comparison on {result['n']} images" + (f" at {size} px" if size else ""), ""]
    lines += ["## Groups (mean ± sd across seeds)", ""]
    shown = with_tumor_metrics(result["classes"], SUMMARY_METRICS)
    lines.append("| group | runs | " + " | ".join(shown) + " |")
    lines.append("|---|---:|" + "---:|" * len(shown))
    for g in result["groups"]:
        cells = [f"{g['metrics'][m]['mean']:.4f} ± {g['metrics'][m]['sd']:.4f}" for m in shown if m in g["metrics"]]
        lines.append(f"| {g['name']} | {len(g['runs'])} | " + " | ".join(cells) + " |")
    b = result["bootstrap"]
    lines += ["", f"## Paired bootstrap of A − B ({b['n_boot']} resamples, seed {b['seed']}, {b['statistic']})", ""]
    lines.append("| A | B | metric | A | B | A − B | 95% CI | p | q (BH) |")
    lines.append("|---|---|---|---:|---:|---:|---|---:|---:|")
    for c in result["comparisons"]:
        for m, r in c["paired_bootstrap"].items():
            q = r.get("q_value", float("nan"))  # absent from compare.json files written before q-values
            valid = r.get("n_valid", b["n_boot"])  # resamples where the metric is defined (every class drawn)
            note = f" (on {valid} of {b['n_boot']} resamples)" if valid < b["n_boot"] else ""
            lines.append(
                f"| {c['a']} | {c['b']} | {m} | {r['a']:.4f} | {r['b']:.4f} | {r['diff']:+.4f} | "
                f"[{r['lo']:+.4f}, {r['hi']:+.4f}]{note} | {_fmt_p(r['p_value'])} | {_fmt_p(q)} |"
            )
    lines += ["", "## McNemar (exact) and DeLong per matched pair of runs", ""]
    classes = result["classes"]
    lines.append("| A | B | McNemar b/c | McNemar p | " + " | ".join(f"DeLong {c} ΔAUROC (p)" for c in classes) + " |")
    lines.append("|---|---|---:|---:|" + "---:|" * len(classes))
    for c in result["comparisons"]:
        for pr in c["pairs"]:
            mc = pr["mcnemar"]
            dl = [
                f"{pr['delong'][k]['diff']:+.4f} ({_fmt_p(pr['delong'][k]['p_value'])})" if k in pr["delong"] else "n/a"
                for k in classes
            ]
            lines.append(
                f"| {pr['a']} | {pr['b']} | {mc['b']}/{mc['c']} | {_fmt_p(mc['p_value'])} | " + " | ".join(dl) + " |"
            )
    lines += [
        "",
        "q (BH): the bootstrap p adjusted for the false discovery rate over every pair of groups, per metric "
        "(Benjamini-Hochberg). b = images only A classifies correctly, c = only B. McNemar and DeLong p-values are "
        "not corrected for multiple comparisons.",
        "",
    ]
    return "\n".join(lines)


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


def study_markdown(result: dict[str, Any]) -> str:
    """A study (:func:`popevit.evaluation.study.run_study`) as Markdown: the comparison table and the extrapolation
    table."""
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
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
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
    return atomic_savefig(fig, path, dpi=120)
