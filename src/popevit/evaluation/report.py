"""``popevit report``: one self-contained HTML file that answers "which model is best, and by how much" first.

Everything is inlined (PNG figures as base64 ``data:`` URIs, CSS in a ``<style>`` element, no JavaScript), so the file
opens offline, prints to PDF, and can be mailed or archived as is. The page reads top-down:

1. **Answer**: the best model by the chosen metric, the comparison table of every model on the internal test split
   (95% bootstrap CIs, the paired-bootstrap difference to the best with its p and Benjamini-Hochberg q), n and the
   data source; then the external validations (every ``RUN/eval/*/metrics.json`` whose ``source.external`` is true,
   one table per named source, its numbers beside the internal ones) and the explanations' faithfulness scores.
2. **Explanations**: the galleries that ``popevit explain`` left in ``RUN/explain/*``.
3. **Runs**: per run, what was trained (model, epochs, time, device), its data (class counts per split, duplicate
   clusters, any leakage-audit JSON), training curves, validation metrics and every evaluation (metric tables, the
   de-duplicated subset, figures titled with model, data and n).
4. **Paired tests**: the full comparison tables (bootstrap, McNemar, DeLong) of :mod:`popevit.evaluation.compare`.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import json
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from popevit import __version__
from popevit.evaluation.compare import (
    align,
    compare_predictions,
    group_names,
    group_runs,
    match_pairs,
    run_name,
    to_markdown,
)
from popevit.evaluation.describe import model_label, source_label
from popevit.evaluation.evaluate import EVAL_DIR, METRICS
from popevit.evaluation.plots import figure_title, plot_all, plot_training_curves
from popevit.evaluation.predictions import PREDICTIONS, Predictions
from popevit.io import atomic_write_text, read_json

HEADLINE = (
    "accuracy",
    "balanced_accuracy",
    "f1_macro",
    "auroc_macro",
    "log_loss",
    "ece",
    "tumor_sensitivity",
    "tumor_specificity",
    "tumor_auroc",
)
PER_CLASS = ("precision", "recall", "f1", "specificity", "auroc")
NAMES = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "f1_macro": "macro F1",
    "auroc_macro": "macro AUROC",
    "log_loss": "log loss",
    "ece": "ECE",
    "tumor_sensitivity": "tumour sensitivity",
    "tumor_specificity": "tumour specificity",
    "tumor_auroc": "tumour AUROC",
}
LOWER_IS_BETTER = {"log_loss", "ece"}
RANKED = ("accuracy", "balanced_accuracy", "auroc_macro", "f1_macro")  # metrics the answer can rank by
FIGURE_ORDER = ("confusion_matrix", "roc", "reliability", "prob_histograms")
EXPLAIN_DIR = "explain"
GALLERIES = ("gallery_confident.png", "gallery_misclassified.png")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;
color:#222;line-height:1.45;padding:0 16px;font-size:15px}
h1{border-bottom:2px solid #444;margin-bottom:4px}h2{border-bottom:1px solid #bbb;margin-top:2em}
h3{margin-top:1.6em}h4{margin:1.2em 0 .3em}
table{border-collapse:collapse;margin:8px 0 16px;font-size:14px}
th,td{border:1px solid #ccc;padding:4px 9px;text-align:right;vertical-align:top}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}
td .ci{white-space:nowrap}
table.facts td{text-align:left}table.facts td:first-child{color:#555;white-space:nowrap}
tr.best td{background:#eef6ee}
pre{background:#f7f7f7;border:1px solid #ddd;padding:8px;overflow-x:auto;font-size:12px;white-space:pre-wrap}
img{max-width:100%;border:1px solid #eee}
figure{margin:8px 0;break-inside:avoid}figcaption{font-size:13px;color:#555}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:10px;align-items:start}
.answer{background:#f6f8fb;border:1px solid #cfd8e3;border-radius:6px;padding:2px 16px 10px;margin-top:12px}
.answer h2{margin-top:.5em}
.lead{font-size:18px;margin:10px 0}
.muted{color:#666;font-size:13px}.warn{color:#a33}.ci{color:#666;font-weight:normal;font-size:.92em}
.toc a{margin-right:.8em}
@page{size:A4;margin:12mm}
@media print{
 body{max-width:none;margin:0;padding:0;font-size:10.5pt}
 table{font-size:8pt;max-width:100%}th,td{padding:2px 4px}td .ci{white-space:normal}
 h2{break-before:page}h2.first{break-before:avoid}
 table,figure,pre{break-inside:avoid}
 img{max-height:120mm;width:auto;object-fit:contain}
 .answer{border:none;padding:0;background:none}
 h2,h3,h4{break-after:avoid}
 .grid{grid-template-columns:1fr 1fr}
 details{display:none}
 a{color:inherit;text-decoration:none}
}
"""


# ------------------------------------------------------------------------------------------------------ inputs


@dataclass
class Evaluation:
    """One ``RUN/eval/<tag>`` folder: its ``metrics.json`` and, when present, its ``predictions.csv``."""

    run: Path
    tag: str
    folder: Path
    result: dict[str, Any]

    @property
    def source(self) -> dict[str, Any]:
        return self.result.get("source") or {}

    @property
    def external(self) -> bool:
        return bool(self.source.get("external"))

    @property
    def has_predictions(self) -> bool:
        return (self.folder / PREDICTIONS).is_file()

    def metric(self, name: str) -> dict[str, Any] | None:
        return (self.result.get("metrics") or {}).get(name)


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_evaluations(run: Path) -> list[Evaluation]:
    """Every evaluation of ``run`` (folders of ``RUN/eval`` holding a ``metrics.json``), by tag.

    Raises:
        ValueError: a ``metrics.json`` that is not valid JSON (the message names it).
    """
    found = []
    for d in sorted((run / EVAL_DIR).glob("*")):
        if not (d / METRICS).is_file():
            continue
        result = read_json(d / METRICS, "metrics.json of an evaluation")  # damaged: an error naming it, no skip
        if isinstance(result, dict) and "metrics" in result:
            found.append(Evaluation(run, d.name, d, result))
    return found


def primary_tag(evals: dict[Path, list[Evaluation]]) -> str | None:
    """The internal evaluation every run has (``test`` when there is one), preferring ones with predictions."""
    shared: set[str] | None = None
    for ev in evals.values():
        tags = {e.tag for e in ev if not e.external}
        shared = tags if shared is None else shared & tags
    if not shared:
        return None

    def key(tag: str) -> tuple[bool, bool, bool, str]:
        with_preds = all(any(e.tag == tag and e.has_predictions for e in ev) for ev in evals.values())
        return (not with_preds, tag != "test", not tag.startswith("test"), tag)

    return min(shared, key=key)


def _meta(run: Path) -> dict[str, Any]:
    return _read_json(run / "model.json") or {}


def _model_of(run: Path) -> str:
    """The run's model in words (``vit_p8_w64_d4_conv + pope (res stem)``), or ``""`` without a ``model.json``."""
    model = _meta(run).get("model") or {}
    return model_label(model.get("name"), model.get("kwargs")) if model else ""


def _paren(text: str, name: str = "") -> str:
    return f" ({_e(text)})" if text and text != name else ""


def _signed(value: float) -> str:
    """``+0.012`` / ``-0.012``, and ``+0.000`` for a difference that rounds to zero (never ``-0.000``)."""
    return f"{(round(value, 3) or 0.0):+.3f}"


def _under(text: str, name: str) -> str:
    """``text`` on a muted second line of a table cell, unless it repeats ``name``."""
    return f"<br><span class='muted'>{_e(text)}</span>" if text and text != name else ""


def _named(run: Path) -> str:
    """``pope (vit_p8_w64_d4_conv + pope)``: the run's name with its model when known and not the same words."""
    model = _model_of(run)
    return f"{run_name(run)} ({model})" if model and model != run_name(run) else run_name(run)


# ------------------------------------------------------------------------------------------------------ formatting


def _e(x: Any) -> str:
    return html.escape(str(x))


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _figure(path: Path, caption: str) -> str:
    return f"<figure>{_img(path, caption)}<figcaption>{_e(caption)}</figcaption></figure>"


def _table(
    header: Sequence[str] | None, rows: Sequence[Sequence[Any]], row_class: Sequence[str] | None = None, cls: str = ""
) -> str:
    head = "<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>" if header else ""
    trs = []
    for i, row in enumerate(rows):
        cls = f" class='{row_class[i]}'" if row_class and row_class[i] else ""
        trs.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    return f"<table{f' class={cls!r}' if cls else ''}>{head}{''.join(trs)}</table>"


def _num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def _ci(m: dict[str, Any] | None, digits: int = 3) -> str:
    """``0.950 [0.920, 0.975]`` with the interval greyed; ``n/a`` where undefined, empty when absent."""
    if m is None:
        return ""
    if m.get("value") is None or m["value"] != m["value"] or m.get("lo") is None:
        return "n/a"
    return f"{m['value']:.{digits}f} <span class='ci'>[{m['lo']:.{digits}f}, {m['hi']:.{digits}f}]</span>"


def _p(p: float | None) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else "&lt; 1e-4"


def _counts(result: dict[str, Any]) -> str:
    counts = result.get("counts") or {}
    return ", ".join(f"{_e(c)} {k}" for c, k in counts.items())


def _mapping(label_map: Any) -> str:
    """``glioma, meningioma, pituitary → tumor; notumor → notumor`` from a class mapping."""
    if not isinstance(label_map, dict):
        return _e(label_map)
    by_target: dict[str, list[str]] = {}
    for src, dst in label_map.items():
        by_target.setdefault(str(dst), []).append(str(src))
    return "; ".join(f"{_e(', '.join(s))} → {_e(t)}" for t, s in by_target.items())


def _seconds(s: Any) -> str:
    if not isinstance(s, int | float):
        return "?"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


# ------------------------------------------------------------------------------------------------------ answer


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
            return _ci(self.evals[0].metric(metric))
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


def _compare_tag(
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


def _answer_section(
    groups: list[list[Path]],
    evals: dict[Path, list[Evaluation]],
    tag: str | None,
    comparison: dict[str, Any] | str | None,
    metric: str,
) -> str:
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
    best = order[0]
    cmp = comparison if isinstance(comparison, dict) else None
    ref = best.evals[0]
    data = source_label(ref.source) or tag
    lead = NAMES.get(metric, metric)
    if len(rows) == 1:
        out.append(
            f"<p class='lead'><b>{_e(best.name)}</b>{_paren(_model_of(best.runs[0]), best.name)}: {lead} "
            f"{best.cell(metric)} on {_e(data)}, n = {ref.result.get('n')}.</p>"
        )
    else:
        second = order[1]
        sentence = (
            f"<p class='lead'>Best by {lead}: <b>{_e(best.name)}</b>{_paren(_model_of(best.runs[0]), best.name)}, "
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
                f" Next: <b>{_e(second.name)}</b> at {second.value(metric):.3f}, "
                f"a difference of {_signed(diff['diff'])} "
                f"<span class='ci'>[{_signed(diff['lo'])}, {_signed(diff['hi'])}]</span> (paired bootstrap p = "
                f"{_p(diff['p_value'])}, q = {_p(q)}): {verdict}."
            )
        out.append(sentence + "</p>")
    header = ["model", "runs", "accuracy [95% CI]", "balanced accuracy", "macro AUROC [95% CI]", "ECE"]
    if len(rows) > 1:
        header += [f"Δ {lead} vs best [95% CI]", "p", "q (BH)"]
    table_rows, classes = [], []
    for r in order:
        cells = [
            f"<b>{_e(r.name)}</b>" + _under(_model_of(r.runs[0]), r.name),
            str(len(r.runs)),
            r.cell("accuracy"),
            r.cell("balanced_accuracy"),
            r.cell("auroc_macro"),
            r.cell("ece"),
        ]
        if len(rows) > 1:
            d = None if r is best else _paired(cmp, r.name, best.name, metric)
            if r is best:
                cells += ["best", "", ""]
            elif d is None:
                cells += ["n/a", "", ""]
            else:
                cells += [
                    f"{_signed(d['diff'])} <span class='ci'>[{_signed(d['lo'])}, {_signed(d['hi'])}]</span>",
                    _p(d["p_value"]),
                    _p(d.get("q_value")),
                ]
        table_rows.append(cells)
        classes.append("best" if r is best and len(rows) > 1 else "")
    out.append(f"<h3>Internal test: {_e(data)}</h3>")
    out.append(_table(header, table_rows, classes))
    boot = ref.result.get("bootstrap") or {}
    where = _image_root(ref) or ref.source.get("resolved") or ref.source.get("manifest") or ref.source.get("data")
    notes = [
        f"n = {ref.result.get('n')} images ({_counts(ref.result)})"
        + (f" in {_e(where)}" if where else "")
        + ", the same images for every model.",
        f"95% CIs: {_e(boot.get('method', 'percentile'))} bootstrap over images ({_e(boot.get('n_boot'))} "
        f"resamples, seed {_e(boot.get('seed'))}); several runs of one model (seeds) show mean ± sd.",
    ]
    if len(rows) > 1:
        if cmp is not None:
            notes.append(
                f"Δ: paired bootstrap of this model minus the best on the same resampled images "
                f"({cmp['bootstrap']['n_boot']} resamples); q: Benjamini-Hochberg over all pairs of models. "
                "McNemar and DeLong tests are under <a href='#paired'>Paired tests</a>."
            )
        else:
            notes.append(f"No paired tests: {_e(comparison)}.")
    out.append("<p class='muted'>" + " ".join(notes) + "</p>")
    out.append(_external_section(groups, evals, tag))
    out.append(_faithfulness_summary([r for g in groups for r in g]))
    out.append("</section>")
    return "\n".join(out)


def tumour_level(ev: Evaluation) -> dict[str, dict[str, Any] | None]:
    """Tumour vs no-tumour sensitivity, specificity and AUROC of an evaluation, whatever its classes.

    With >= 3 classes and ``notumor`` they are the ``tumor_*`` metrics; with two classes (``notumor`` and a tumour
    class, as after a label map onto tumor/notumor) they are that class's recall, ``notumor``'s recall and the AUROC.
    """
    classes = list(ev.result.get("classes") or [])
    if ev.metric("tumor_sensitivity") is not None:
        return {k: ev.metric(f"tumor_{k}") for k in ("sensitivity", "specificity", "auroc")}
    if len(classes) == 2 and "notumor" in classes:
        tumour = next(c for c in classes if c != "notumor")
        return {
            "sensitivity": ev.metric(f"recall/{tumour}"),
            "specificity": ev.metric("recall/notumor"),
            "auroc": ev.metric("auroc_macro"),
        }
    return {"sensitivity": None, "specificity": None, "auroc": None}


def _image_root(ev: Evaluation) -> str | None:
    """The folder that holds every evaluated image (from ``predictions.csv``), or None."""
    if not ev.has_predictions:
        return None
    with open(ev.folder / PREDICTIONS, newline="", encoding="utf-8") as f:
        folders = {os.path.dirname(row["path"]) for row in csv.DictReader(f) if row.get("path")}
    try:
        return os.path.commonpath(sorted(folders)) if folders else None
    except ValueError:  # relative and absolute paths mixed
        return None


def _external_section(groups: list[list[Path]], evals: dict[Path, list[Evaluation]], tag: str) -> str:
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
        out.append(f"<h3 id='external-{_e(name)}'>External validation: {_e(name)}</h3>")
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
                pairs.append(f"{_ci(a) or 'n/a'} → {_ci(b) or 'n/a'}" if a or b else "n/a")
            rows.append(
                [
                    f"<b>{_e(run_name(e.run))}</b>" + _under(_model_of(e.run), run_name(e.run)),
                    _e(e.tag),
                    f"{e.result.get('n')}<br><span class='muted'>{_counts(e.result)}</span>",
                    _ci(e.metric("accuracy")),
                    _ci(e.metric("auroc_macro")),
                    *pairs,
                ]
            )
        out.append(_table(header, rows))
        notes = []
        where = exts[0].source.get("data") or exts[0].source.get("manifest")
        if where:
            notes.append(f"Images: {_e(where)}.")
        label_map = exts[0].result.get("label_map") or exts[0].source.get("label_map")
        if label_map:
            notes.append(f"Classes mapped: {_mapping(label_map)}.")
        classes = exts[0].result.get("classes") or []
        notes.append(
            f"Accuracy and AUROC are over this source's classes ({_e(', '.join(classes))}); the tumour-level "
            f"columns (tumour vs no tumour) compare like with like: the internal '{_e(tag)}' evaluation of the same "
            "run on the left, this source on the right."
        )
        out.append("<p class='muted'>" + " ".join(notes) + "</p>")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------------ explanations


def _explain_dirs(run: Path) -> list[Path]:
    root = run / EXPLAIN_DIR
    if not root.is_dir():
        return []
    return [d for d in sorted(root.iterdir()) if (d / "faithfulness.json").is_file() or (d / GALLERIES[0]).is_file()]


def _faithfulness_summary(runs: Sequence[Path]) -> str:
    rows = []
    for r in runs:
        for d in _explain_dirs(r):
            f = _read_json(d / "faithfulness.json")
            if not isinstance(f, dict):
                continue
            rnd = f.get("random") or {}
            mask = f.get("mask") or {}
            for method, v in (f.get("methods") or {}).items():
                m = (mask.get("methods") or {}).get(method) or {}
                rows.append(
                    [
                        f"<b>{_e(run_name(r))}</b>",
                        _e(method),
                        _e(f.get("images", "?")),
                        f"{_num(m.get('pointing_hit_rate'), 2)} <span class='ci'>(chance "
                        f"{_num(mask.get('area_fraction'), 2)})</span>"
                        if m
                        else "n/a",
                        _num(m.get("mass_share"), 2) if m else "n/a",
                        f"{_num(v.get('deletion_auc'))} <span class='ci'>(random "
                        f"{_num(rnd.get('deletion_auc'))})</span>",
                        f"{_num(v.get('insertion_auc'))} <span class='ci'>(random "
                        f"{_num(rnd.get('insertion_auc'))})</span>",
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
        + _table(header, rows)
        + "<p class='muted'>Pointing game: share of tumour images whose heatmap maximum lies inside the lesion mask; "
        "chance is the masks' mean area fraction. Deletion/insertion: area under the target-class probability as "
        "the most salient pixels are removed from the image / inserted into a blurred copy; a random map is the "
        "baseline. Galleries under <a href='#explanations'>Explanations</a>.</p>"
    )


def _explain_section(runs: Sequence[Path]) -> str:
    parts = []
    for r in runs:
        for d in _explain_dirs(r):
            figs = [_figure(d / g, f"{_named(r)}: {g[:-4].replace('_', ' ')}, {d.name}")
                    for g in GALLERIES if (d / g).is_file()]  # fmt: skip
            if figs:
                parts.append(f"<h3>{_e(run_name(r))}: {_e(d.name)}</h3><div class='grid'>{''.join(figs)}</div>")
    if not parts:
        return ""
    return (
        "<h2 id='explanations'>Explanations</h2><p class='muted'>Heatmaps over the model input, with the tumour "
        "mask outlined where the image has one (phantoms). Written by <code>popevit explain</code>.</p>"
        + "\n".join(parts)
    )


# ------------------------------------------------------------------------------------------------------ per run


def _data_summary(run: Path) -> str:
    parts = []
    manifest = run / "manifest.csv"
    if manifest.is_file():
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
        cols = list(rows[0]) if rows else []
        label_col = next((c for c in ("label", "class") if c in cols), None)
        group_col = next((c for c in ("group", "cluster", "dup_group") if c in cols), None)
        if label_col and "split" in cols:
            counts = Counter((r["split"], r[label_col]) for r in rows)
            splits = sorted(
                {s for s, _ in counts},
                key=lambda s: ("train", "val", "test").index(s) if s in ("train", "val", "test") else 9,
            )
            labels = sorted({c for _, c in counts})
            table_rows = [
                [_e(s), *[counts.get((s, c), 0) for c in labels], sum(counts.get((s, c), 0) for c in labels)]
                for s in splits
            ]
            parts.append(_table(["split", *labels, "total"], table_rows))
        if group_col:
            sizes = Counter(r[group_col] for r in rows)
            multi = [n for n in sizes.values() if n > 1]
            parts.append(
                f"<p>Duplicate clusters: {len(sizes)} clusters over {len(rows)} images; {len(multi)} clusters "
                f"hold {sum(multi)} images with an exact or near duplicate (kept within one split).</p>"
            )
    for audit in sorted(run.glob("*audit*.json")):
        content = _read_json(audit)
        if content is None:
            continue
        parts.append(f"<h4>Leakage and shortcut audit ({_e(audit.name)})</h4>")
        try:  # a `popevit data audit --json` report: its own summary (cross-split duplicates, shortcut probe)
            from popevit.data.audit import format_audit

            parts.append(f"<pre>{_e(format_audit(content))}</pre>")
        except (KeyError, TypeError, ImportError):
            pass
        parts.append(
            f"<details><summary>full JSON</summary><pre>{_e(json.dumps(content, indent=2)[:20000])}</pre></details>"
        )
    if not parts:
        return "<p class='muted'>No manifest.csv or audit JSON in the run folder.</p>"
    return "\n".join(parts)


def _facts(run: Path) -> list[list[str]]:
    """What was trained, how long and where, as label/value rows (no raw records)."""
    meta = _meta(run)
    info = _read_json(run / "run.json") or {}
    model = meta.get("model") or {}
    kw = model.get("kwargs") or {}
    pre = meta.get("preprocess") or {}
    facts = [["folder", _e(run.resolve())]]
    if model:
        shape = ", ".join(
            f"{k.replace('_', ' ')} {kw[k]}" for k in ("patch_size", "embed_dim", "depth", "num_heads") if k in kw
        )
        facts.append(["model", _e(model_label(model.get("name"), kw)) + (f" <span class='muted'>({_e(shape)})</span>"
                                                                           if shape else "")])  # fmt: skip
    if meta.get("classes"):
        facts.append(["classes", _e(", ".join(meta["classes"]))])
    if pre:
        facts.append(["input", f"{_e(pre.get('img_size'))} px, {_e(pre.get('in_chans'))} channel(s)"])
    if info:
        trained = f"{_e(info.get('epochs', '?'))} epochs"
        if info.get("best_epoch") is not None or (meta.get("extra") or {}).get("best_epoch") is not None:
            best = info.get("best_epoch", (meta.get("extra") or {}).get("best_epoch"))
            trained += f" (best checkpoint: epoch {_e(best)})"
        trained += f", {_seconds(info.get('wall_s'))}"
        if info.get("images_seen"):
            trained += f", {info['images_seen']:,} images seen"
        if info.get("hit_time_cap"):
            trained += ", stopped by the time cap (train.max_minutes)"
        if info.get("resumed"):
            trained += ", resumed"
        facts.append(["training", trained])
        cpu = info.get("cpu") if isinstance(info.get("cpu"), dict) else {}
        where = [_e(info["device"])] if info.get("device") else []
        if cpu.get("model"):
            where.append(_e(cpu["model"]) + (f" ({_e(cpu['capability'])})" if cpu.get("capability") else ""))
        if info.get("precision"):
            where.append(f"precision {_e(info['precision'])}")
        if where:
            facts.append(["device", " · ".join(where)])
        for stage in info.get("upstream") or []:
            facts.append(
                [
                    f"built on ({_e(stage.get('role'))})",
                    f"{_e(stage.get('path'))}: {_seconds(stage.get('wall_s'))}, {_e(stage.get('epochs', '?'))} epochs",
                ]
            )
        if info.get("upstream") and info.get("budget_wall_s") is not None:
            facts.append(["whole budget", _seconds(info["budget_wall_s"])])
        prov = [f"popevit {info['popevit_version']}" if info.get("popevit_version") else ""]
        if info.get("git_commit"):
            prov.append(f"commit {str(info['git_commit'])[:10]}")
        if info.get("manifest_sha256"):
            prov.append(f"manifest sha256 {str(info['manifest_sha256'])[:12]}")
        if any(prov):
            facts.append(["provenance", _e(", ".join(p for p in prov if p))])
    return facts


def _figures(ev: Evaluation, tmp: Path) -> list[tuple[Path, str]]:
    """The evaluation's figures: its own PNGs, or drawn here from ``predictions.csv`` (archived runs have none)."""
    plots = ev.result.get("plots") or {}
    own = [(ev.folder / plots[k], k) for k in FIGURE_ORDER if k in plots and (ev.folder / plots[k]).is_file()]
    if own or not ev.has_predictions:
        return own
    p = Predictions.load(ev.folder / PREDICTIONS)
    model = ev.result.get("model") or {}
    title = figure_title(model_label(model.get("name"), model.get("kwargs")), source_label(ev.source), len(p.y))
    drawn = plot_all(p.y, p.proba, p.classes, tmp / f"{run_name(ev.run)}-{ev.tag}", title=title)
    return [(drawn[k], k) for k in FIGURE_ORDER if k in drawn]


def _eval_section(ev: Evaluation, tmp: Path) -> str:
    result = ev.result
    src = ev.source
    boot = result.get("bootstrap") or {}
    what = source_label(src) or ev.tag
    desc = [f"n = {result.get('n')} ({_counts(result)})"]
    if src.get("skipped"):
        desc.append(f"{len(src['skipped'])} unreadable files skipped")
    desc.append(f"test-time flip: {'yes' if result.get('tta') else 'no'}")
    if result.get("img_size"):
        desc.append(f"input {result['img_size']} px")
    desc.append(
        f"95% {_e(boot.get('method', 'percentile'))} bootstrap CIs over images, {_e(boot.get('n_boot'))} resamples"
    )
    out = [f"<h3>Evaluation '{_e(ev.tag)}': {_e(what)}</h3>", f"<p>{'; '.join(desc)}.</p>"]
    cal = result.get("calibration")
    if cal:
        out.append(
            f"<p>Temperature-scaled: T = {_num(cal.get('temperature'))}, fitted on "
            f"{_e((cal.get('fit_on') or {}).get('n'))} validation images"
            + (" (at its bound: the validation split is separated perfectly)" if cal.get("at_bound") else "")
            + ".</p>"
        )
    dedup = result.get("dedup")
    header = ["metric", f"all images (n = {result.get('n')})"]
    if dedup:
        header.append(f"no duplicate in {Path(dedup['against']).name} (n = {dedup['n']})")
    rows = []
    for name in HEADLINE:
        if name in result["metrics"]:
            row = [_e(NAMES.get(name, name)), _ci(result["metrics"][name], 4)]
            if dedup:
                row.append(_ci(dedup["metrics"].get(name), 4))
            rows.append(row)
    out.append(_table(header, rows))
    if dedup:
        out.append(
            f"<p class='muted'>De-duplicated subset: {dedup['n_removed']} of {result['n']} images removed "
            f"({dedup.get('n_exact_duplicates', '?')} exact, {dedup.get('n_near_duplicates', '?')} near "
            f"duplicates of {dedup.get('n_reference', '?')} reference images).</p>"
        )
    classes = result.get("classes") or []
    rows = [[_e(c), *[_ci(result["metrics"].get(f"{s}/{c}")) for s in PER_CLASS]] for c in classes]
    out.append("<h4>Per class (one-vs-rest)</h4>" + _table(["class", *PER_CLASS], rows))
    figs = _figures(ev, tmp)
    confusion = [f for f in figs if f[1] == "confusion_matrix"]
    others = [f for f in figs if f[1] != "confusion_matrix"]
    for path, name in confusion:
        out.append(_figure(path, f"{name.replace('_', ' ')}: {run_name(ev.run)}, {what}"))
    if others:
        out.append(
            "<div class='grid'>"
            + "".join(_figure(p, f"{n.replace('_', ' ')}: {run_name(ev.run)}, {what}") for p, n in others)
            + "</div>"
        )
    dedup_figs = [ev.folder / name for name in ((dedup or {}).get("plots") or {}).values()]
    dedup_figs = [f for f in dedup_figs if f.is_file()]
    if dedup_figs:
        out.append(
            "<h4>De-duplicated subset</h4><div class='grid'>"
            + "".join(_figure(f, f.stem.replace("_", " ")) for f in dedup_figs)
            + "</div>"
        )
    return "\n".join(out)


def _run_section(run: Path, evals: list[Evaluation], tmp: Path) -> str:
    out = [f"<h2 id='run-{_e(run_name(run))}'>Run {_e(run_name(run))}</h2>", _table(None, _facts(run), cls="facts")]
    if (run / "config.yaml").is_file():
        out.append(
            f"<details><summary>config.yaml</summary><pre>{_e((run / 'config.yaml').read_text())}</pre></details>"
        )
    out.append("<h3>Data</h3>" + _data_summary(run))
    curves = run / "logs" / "csv" / "metrics.csv"
    if curves.is_file():
        png = plot_training_curves(curves, tmp / f"{run_name(run)}_curves.png", title=_named(run))
        if png is not None:
            out.append("<h3>Training curves</h3>" + _figure(png, f"training curves of {run_name(run)}"))
    val = _read_json(run / "val_metrics.json")
    if isinstance(val, dict) and val:
        shown = {k: v for k, v in val.items() if isinstance(v, int | float)}
        out.append(
            "<h3>Validation metrics of the best checkpoint</h3>"
            + _table(["metric", "value"], [[_e(k.removeprefix("val/")), _num(v, 4)] for k, v in shown.items()])
        )
    if not evals:
        out.append(f"<p class='warn'>No evaluation found: run <code>popevit evaluate {_e(run)}</code> first.</p>")
    for ev in evals:
        out.append(_eval_section(ev, tmp))
    return "\n".join(out)


def _comparison_section(
    groups: list[list[Path]],
    evals: dict[Path, list[Evaluation]],
    computed: dict[str, dict[str, Any] | str],
    n_boot: int,
    seed: int,
) -> str:
    """Full paired tests on every evaluation tag that all runs have predictions for."""
    runs = [r for g in groups for r in g]
    tags = set.intersection(*[{e.tag for e in evals[r] if e.has_predictions} for r in runs])
    out = ["<h2 id='paired'>Paired tests</h2>"]
    if not tags:
        return out[0] + "<p class='muted'>No evaluation is shared by all runs; nothing to compare.</p>"
    for tag in sorted(tags):
        result = computed.get(tag) or _compare_tag(groups, evals, tag, n_boot, seed)
        if isinstance(result, str):
            out.append(f"<h3>{_e(tag)}</h3><p class='warn'>{_e(result)}</p>")
            continue
        out.append(f"<h3>On evaluation '{_e(tag)}'</h3>" + _markdown_tables_to_html(to_markdown(result)))
    return "\n".join(out)


def _markdown_tables_to_html(md: str) -> str:
    """Render the simple Markdown of :func:`popevit.evaluation.compare.to_markdown` (headings, tables, text)."""
    out, table = [], []

    def flush() -> None:
        if table:
            cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in table]
            out.append(_table(cells[0], [[_e(c) for c in r] for r in cells[2:]]))
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("## "):
            out.append(f"<h4>{_e(line[3:])}</h4>")
        elif line.startswith("# "):
            out.append(f"<p><b>{_e(line[2:])}</b></p>")
        elif line.strip():
            out.append(f"<p class='muted'>{_e(line)}</p>")
    flush()
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------------ page


def build_report(
    runs: Sequence[str | Path],
    out_html: str | Path,
    *,
    title: str = "popevit report",
    compare: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
    metric: str = "accuracy",
) -> Path:
    """Write one self-contained HTML report for ``runs``.

    Args:
        runs: run directories (evaluate them first with ``popevit evaluate``); seed suffixes (``-s0``) group runs of
            one model, as in ``popevit compare``.
        out_html: output file (written atomically: a failed report leaves an earlier one intact).
        title: page title.
        compare: with >= 2 models, add paired tests (the answer's Δ, p and q; the full tables at the end).
        n_boot: bootstrap resamples of the comparisons.
        seed: bootstrap seed of the comparisons.
        metric: what "best" means in the answer: one of :data:`RANKED`.

    Returns:
        ``out_html``.
    """
    if metric not in RANKED:
        raise ValueError(f"metric {metric!r} cannot rank models; use one of {', '.join(RANKED)}")
    runs = [Path(r) for r in runs]
    for r in runs:
        if not r.is_dir():
            raise FileNotFoundError(f"run folder {str(r)!r} not found")
    groups = group_runs(runs)
    if len(groups) < 2 and len(runs) > 1:
        groups = [[r] for r in runs]
    evals = {r: load_evaluations(r) for r in runs}
    tag = primary_tag(evals)
    computed: dict[str, dict[str, Any] | str] = {}
    if compare and tag is not None and len(groups) >= 2:
        computed[tag] = _compare_tag(groups, evals, tag, n_boot, seed)
    stamp = _dt.datetime.now().isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="popevit-report-") as tmp:
        sections = [_answer_section(groups, evals, tag, computed.get(tag), metric), _explain_section(runs)]
        sections += [_run_section(r, evals[r], Path(tmp)) for r in runs]
    if compare and len(groups) >= 2:
        sections.append(_comparison_section(groups, evals, computed, n_boot, seed))
    toc = "".join(f"<a href='#run-{_e(run_name(r))}'>{_e(run_name(r))}</a>" for r in runs)
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1>"
        f"<p class='muted toc'>popevit {_e(__version__)}, generated {_e(stamp)}. Runs: {toc}"
        + ("<a href='#paired'>paired tests</a>" if compare and len(groups) >= 2 else "")
        + "</p>"
        + "\n".join(s for s in sections if s)
        + "</body></html>\n"
    )
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_html, page)
    return out_html
