"""The report's first section, the answer: the best model, the comparison table with paired-bootstrap differences,
the external validations and the explanations' faithfulness scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from popevit.evaluation.compare import align, compare_predictions, group_names, match_pairs, run_name
from popevit.evaluation.describe import source_label
from popevit.evaluation.predictions import PREDICTIONS, Predictions
from popevit.evaluation.report_html import (
    esc,
    fmt_ci,
    fmt_counts,
    fmt_mapping,
    fmt_num,
    fmt_p,
    html_table,
    paren,
    signed,
    under,
)
from popevit.evaluation.report_inputs import (
    LOWER_IS_BETTER,
    NAMES,
    Evaluation,
    explain_dirs,
    image_root,
    model_of,
    read_optional_json,
    tumour_level,
)


@dataclass
class GroupRow:
    name: str
    runs: list[Path]
    evals: list[Evaluation]

    def value(self, metric: str) -> float:
        vals = [m["value"] for e in self.evals if (m := e.metric(metric)) and m.get("value") is not None]
        return float(np.mean(vals)) if vals else float("nan")

    def cell(self, metric: str) -> str:
        if len(self.evals) == 1:
            return fmt_ci(self.evals[0].metric(metric))
        vals = [m["value"] for e in self.evals if (m := e.metric(metric)) and m.get("value") is not None]
        if not vals:
            return "n/a"
        sd = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
        return f"{np.mean(vals):.3f} <span class='ci'>± {sd:.3f} sd</span>"


def _paired(comparison: dict[str, Any] | None, a: str, b: str, metric: str) -> dict[str, Any] | None:
    """The paired bootstrap of ``metric`` for ``a − b`` (sign flipped when compare computed ``b − a``)."""
    if comparison is None:
        return None
    for c in comparison["comparisons"]:
        r = c["paired_bootstrap"].get(metric)
        if r is None:
            continue
        if (c["a"], c["b"]) == (a, b):
            return r
        if (c["a"], c["b"]) == (b, a):
            return {**r, "diff": -r["diff"], "lo": -r["hi"], "hi": -r["lo"]}
    return None


def compare_tag(
    groups: list[list[Path]], evals: dict[Path, list[Evaluation]], tag: str, n_boot: int, seed: int
) -> dict[str, Any] | str:
    """Paired comparison of the groups on evaluation ``tag``, or the reason it cannot be made."""
    flat = [r for g in groups for r in g]
    by_run = {r: next((e for e in evals[r] if e.tag == tag), None) for r in flat}
    missing = [run_name(r) for r, e in by_run.items() if e is None or not e.has_predictions]
    if missing:
        return f"no predictions.csv for {', '.join(missing)} on '{tag}'"
    try:
        preds = align([Predictions.load(by_run[r].folder / PREDICTIONS) for r in flat], [str(r) for r in flat])
    except ValueError as err:
        return str(err)
    grouped, k = [], 0
    for g in groups:
        grouped.append(preds[k : k + len(g)])
        k += len(g)
    return compare_predictions(
        grouped,
        group_names(groups),
        [[run_name(r) for r in g] for g in groups],
        n_boot=n_boot,
        seed=seed,
        pairs={(i, j): match_pairs(groups[i], groups[j]) for i, j in combinations(range(len(groups)), 2)},
    )


def answer_section(
    groups: list[list[Path]],
    evals: dict[Path, list[Evaluation]],
    tag: str | None,
    comparison: dict[str, Any] | str | None,
    metric: str,
) -> str:
    """The answer: the best model by ``metric`` on evaluation ``tag``, every model's numbers and their difference to
    the best (from ``comparison``, or the reason it is missing), then the external validations and faithfulness."""
    out = ["<section class='answer'><h2 class='first' id='answer'>Answer</h2>"]
    if tag is None:
        out.append(
            "<p class='warn'>No evaluation is shared by all runs: run <code>popevit evaluate RUN</code> on each "
            "(the default evaluates the test split of the run's manifest).</p></section>"
        )
        return "\n".join(out)
    rows = [
        GroupRow(name, g, [e for r in g for e in evals[r] if e.tag == tag])
        for name, g in zip(group_names(groups), groups, strict=True)
    ]
    sign = -1.0 if metric in LOWER_IS_BETTER else 1.0
    order = sorted(
        rows,
        key=lambda r: (-sign * np.nan_to_num(r.value(metric), nan=-np.inf), -np.nan_to_num(r.value("auroc_macro"))),
    )
    cmp = comparison if isinstance(comparison, dict) else None
    ref = order[0].evals[0]
    data = source_label(ref.source) or tag
    out.append(_lead(order, metric, cmp, ref, data))
    out.append(f"<h3>Internal test: {esc(data)}</h3>")
    out.append(_answer_table(order, metric, cmp))
    out.append(_answer_notes(ref, len(rows), comparison, cmp))
    out.append(external_section(groups, evals, tag))
    out.append(faithfulness_summary([r for g in groups for r in g]))
    out.append("</section>")
    return "\n".join(out)


def _lead(order: list[GroupRow], metric: str, cmp: dict[str, Any] | None, ref: Evaluation, data: str) -> str:
    """The answer's first sentence: the best model, and how far the next one is behind it (paired bootstrap)."""
    best = order[0]
    lead = NAMES.get(metric, metric)
    if len(order) == 1:
        return (
            f"<p class='lead'><b>{esc(best.name)}</b>{paren(model_of(best.runs[0]), best.name)}: {lead} "
            f"{best.cell(metric)} on {esc(data)}, n = {ref.result.get('n')}.</p>"
        )
    second = order[1]
    sentence = (
        f"<p class='lead'>Best by {lead}: <b>{esc(best.name)}</b>{paren(model_of(best.runs[0]), best.name)}, "
        f"{best.cell(metric)}."
    )
    diff = _paired(cmp, second.name, best.name, metric)
    if diff is not None:
        q = diff.get("q_value", diff["p_value"])
        verdict = (
            "a significant difference (q &lt; 0.05)"
            if q is not None and np.isfinite(q) and q < 0.05
            else "not a significant difference (q ≥ 0.05)"
        )
        sentence += (
            f" Next: <b>{esc(second.name)}</b> at {second.value(metric):.3f}, "
            f"a difference of {signed(diff['diff'])} "
            f"<span class='ci'>[{signed(diff['lo'])}, {signed(diff['hi'])}]</span> (paired bootstrap p = "
            f"{fmt_p(diff['p_value'])}, q = {fmt_p(q)}): {verdict}."
        )
    return sentence + "</p>"


def _answer_table(order: list[GroupRow], metric: str, cmp: dict[str, Any] | None) -> str:
    """Every model, best first, with its CIs and (with several models) its paired difference to the best."""
    best = order[0]
    several = len(order) > 1
    header = ["model", "runs", "accuracy [95% CI]", "balanced accuracy", "macro AUROC [95% CI]", "ECE"]
    if several:
        header += [f"Δ {NAMES.get(metric, metric)} vs best [95% CI]", "p", "q (BH)"]
    table_rows, classes = [], []
    for r in order:
        cells = [
            f"<b>{esc(r.name)}</b>" + under(model_of(r.runs[0]), r.name),
            str(len(r.runs)),
            r.cell("accuracy"),
            r.cell("balanced_accuracy"),
            r.cell("auroc_macro"),
            r.cell("ece"),
        ]
        if several:
            d = None if r is best else _paired(cmp, r.name, best.name, metric)
            if r is best:
                cells += ["best", "", ""]
            elif d is None:
                cells += ["n/a", "", ""]
            else:
                cells += [
                    f"{signed(d['diff'])} <span class='ci'>[{signed(d['lo'])}, {signed(d['hi'])}]</span>",
                    fmt_p(d["p_value"]),
                    fmt_p(d.get("q_value")),
                ]
        table_rows.append(cells)
        classes.append("best" if r is best and several else "")
    return html_table(header, table_rows, classes)


def _answer_notes(
    ref: Evaluation, n_models: int, comparison: dict[str, Any] | str | None, cmp: dict[str, Any] | None
) -> str:
    """What the answer's numbers are: the images, the bootstrap, and the paired tests (or why there are none)."""
    boot = ref.result.get("bootstrap") or {}
    where = image_root(ref) or ref.source.get("resolved") or ref.source.get("manifest") or ref.source.get("data")
    notes = [
        f"n = {ref.result.get('n')} images ({fmt_counts(ref.result)})"
        + (f" in {esc(where)}" if where else "")
        + ", the same images for every model.",
        f"95% CIs: {esc(boot.get('method', 'percentile'))} bootstrap over images ({esc(boot.get('n_boot'))} "
        f"resamples, seed {esc(boot.get('seed'))}); several runs of one model (seeds) show mean ± sd.",
    ]
    if n_models > 1:
        if cmp is not None:
            notes.append(
                f"Δ: paired bootstrap of this model minus the best on the same resampled images "
                f"({cmp['bootstrap']['n_boot']} resamples); q: Benjamini-Hochberg over all pairs of models. "
                "McNemar and DeLong tests are under <a href='#paired'>Paired tests</a>."
            )
        else:
            notes.append(f"No paired tests: {esc(comparison)}.")
    return "<p class='muted'>" + " ".join(notes) + "</p>"


def external_section(groups: list[list[Path]], evals: dict[Path, list[Evaluation]], tag: str) -> str:
    """One table per external source: each run's numbers there, beside its tumour-level numbers on ``tag``."""
    runs = [r for g in groups for r in g]
    by_source: dict[str, list[Evaluation]] = {}
    for r in runs:
        for e in evals[r]:
            if e.external:
                by_source.setdefault(str(e.source.get("name") or e.tag), []).append(e)
    if not by_source:
        return ""
    out = []
    for name, exts in by_source.items():
        out.append(f"<h3 id='external-{esc(name)}'>External validation: {esc(name)}</h3>")
        header = ["run", "evaluation", "n", "accuracy [95% CI]", "macro AUROC [95% CI]"]
        header += [f"tumour {k}: internal → {name}" for k in ("sensitivity", "specificity", "AUROC")]
        rows = []
        for e in exts:
            internal = next((i for i in evals[e.run] if i.tag == tag), None)
            inside = tumour_level(internal) if internal is not None else {}
            outside = tumour_level(e)
            pairs = []
            for k in ("sensitivity", "specificity", "auroc"):
                a, b = inside.get(k), outside.get(k)
                pairs.append(f"{fmt_ci(a) or 'n/a'} → {fmt_ci(b) or 'n/a'}" if a or b else "n/a")
            rows.append(
                [
                    f"<b>{esc(run_name(e.run))}</b>" + under(model_of(e.run), run_name(e.run)),
                    esc(e.tag),
                    f"{e.result.get('n')}<br><span class='muted'>{fmt_counts(e.result)}</span>",
                    fmt_ci(e.metric("accuracy")),
                    fmt_ci(e.metric("auroc_macro")),
                    *pairs,
                ]
            )
        out.append(html_table(header, rows))
        notes = []
        where = exts[0].source.get("data") or exts[0].source.get("manifest")
        if where:
            notes.append(f"Images: {esc(where)}.")
        label_map = exts[0].result.get("label_map") or exts[0].source.get("label_map")
        if label_map:
            notes.append(f"Classes mapped: {fmt_mapping(label_map)}.")
        classes = exts[0].result.get("classes") or []
        notes.append(
            f"Accuracy and AUROC are over this source's classes ({esc(', '.join(classes))}); the tumour-level "
            f"columns (tumour vs no tumour) compare like with like: the internal '{esc(tag)}' evaluation of the same "
            "run on the left, this source on the right."
        )
        out.append("<p class='muted'>" + " ".join(notes) + "</p>")
    return "\n".join(out)


def faithfulness_summary(runs: Sequence[Path]) -> str:
    rows = []
    for r in runs:
        for d in explain_dirs(r):
            f = read_optional_json(d / "faithfulness.json")
            if not isinstance(f, dict):
                continue
            rnd = f.get("random") or {}
            mask = f.get("mask") or {}
            for method, v in (f.get("methods") or {}).items():
                m = (mask.get("methods") or {}).get(method) or {}
                rows.append(
                    [
                        f"<b>{esc(run_name(r))}</b>",
                        esc(method),
                        esc(f.get("images", "?")),
                        f"{fmt_num(m.get('pointing_hit_rate'), 2)} <span class='ci'>(chance "
                        f"{fmt_num(mask.get('area_fraction'), 2)})</span>"
                        if m
                        else "n/a",
                        fmt_num(m.get("mass_share"), 2) if m else "n/a",
                        f"{fmt_num(v.get('deletion_auc'))} <span class='ci'>(random "
                        f"{fmt_num(rnd.get('deletion_auc'))})</span>",
                        f"{fmt_num(v.get('insertion_auc'))} <span class='ci'>(random "
                        f"{fmt_num(rnd.get('insertion_auc'))})</span>",
                    ]
                )
    if not rows:
        return ""
    header = [
        "run",
        "method",
        "images",
        "pointing game (hit rate)",
        "heat mass in tumour",
        "deletion AUC (lower is better)",
        "insertion AUC (higher is better)",
    ]
    return (
        "<h3>Explanations: do the heatmaps point at the tumour?</h3>"
        + html_table(header, rows)
        + "<p class='muted'>Pointing game: share of tumour images whose heatmap maximum lies inside the lesion mask; "
        "chance is the masks' mean area fraction. Deletion/insertion: area under the target-class probability as "
        "the most salient pixels are removed from the image / inserted into a blurred copy; a random map is the "
        "baseline. Galleries under <a href='#explanations'>Explanations</a>.</p>"
    )
