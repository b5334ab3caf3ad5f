"""The report's sections after the answer: the explanation galleries, one section per run (what was trained, its
data, training curves, every evaluation with its figures) and the full paired tests.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from popevit.evaluation.compare import run_name, to_markdown
from popevit.evaluation.describe import model_label, source_label
from popevit.evaluation.plots import figure_title, plot_all, plot_training_curves
from popevit.evaluation.predictions import PREDICTIONS, Predictions
from popevit.evaluation.report_answer import compare_tag
from popevit.evaluation.report_html import (
    esc,
    fmt_ci,
    fmt_counts,
    fmt_num,
    fmt_seconds,
    html_figure,
    html_table,
    markdown_tables_to_html,
)
from popevit.evaluation.report_inputs import (
    FIGURE_ORDER,
    GALLERIES,
    HEADLINE,
    NAMES,
    PER_CLASS,
    Evaluation,
    explain_dirs,
    named,
    read_optional_json,
    run_meta,
)


def explain_section(runs: Sequence[Path]) -> str:
    parts = []
    for r in runs:
        for d in explain_dirs(r):
            figs = [html_figure(d / g, f"{named(r)}: {g[:-4].replace('_', ' ')}, {d.name}")
                    for g in GALLERIES if (d / g).is_file()]  # fmt: skip
            if figs:
                parts.append(f"<h3>{esc(run_name(r))}: {esc(d.name)}</h3><div class='grid'>{''.join(figs)}</div>")
    if not parts:
        return ""
    return (
        "<h2 id='explanations'>Explanations</h2><p class='muted'>Heatmaps over the model input, with the tumour "
        "mask outlined where the image has one (phantoms). Written by <code>popevit explain</code>.</p>"
        + "\n".join(parts)
    )


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
                [esc(s), *[counts.get((s, c), 0) for c in labels], sum(counts.get((s, c), 0) for c in labels)]
                for s in splits
            ]
            parts.append(html_table(["split", *labels, "total"], table_rows))
        if group_col:
            sizes = Counter(r[group_col] for r in rows)
            multi = [n for n in sizes.values() if n > 1]
            parts.append(
                f"<p>Duplicate clusters: {len(sizes)} clusters over {len(rows)} images; {len(multi)} clusters "
                f"hold {sum(multi)} images with an exact or near duplicate (kept within one split).</p>"
            )
    for audit in sorted(run.glob("*audit*.json")):
        content = read_optional_json(audit)
        if content is None:
            continue
        parts.append(f"<h4>Leakage and shortcut audit ({esc(audit.name)})</h4>")
        try:  # a `popevit data audit --json` report: its own summary (cross-split duplicates, shortcut probe)
            from popevit.data.audit import format_audit

            parts.append(f"<pre>{esc(format_audit(content))}</pre>")
        except (KeyError, TypeError, ImportError):
            pass
        parts.append(
            f"<details><summary>full JSON</summary><pre>{esc(json.dumps(content, indent=2)[:20000])}</pre></details>"
        )
    if not parts:
        return "<p class='muted'>No manifest.csv or audit JSON in the run folder.</p>"
    return "\n".join(parts)


def _facts(run: Path) -> list[list[str]]:
    """What was trained, how long and where, as label/value rows (no raw records)."""
    meta = run_meta(run)
    info = read_optional_json(run / "run.json") or {}
    model = meta.get("model") or {}
    kw = model.get("kwargs") or {}
    pre = meta.get("preprocess") or {}
    facts = [["folder", esc(run.resolve())]]
    if model:
        shape = ", ".join(
            f"{k.replace('_', ' ')} {kw[k]}" for k in ("patch_size", "embed_dim", "depth", "num_heads") if k in kw
        )
        facts.append(["model", esc(model_label(model.get("name"), kw)) + (f" <span class='muted'>({esc(shape)})</span>"
                                                                           if shape else "")])  # fmt: skip
    if meta.get("classes"):
        facts.append(["classes", esc(", ".join(meta["classes"]))])
    if pre:
        facts.append(["input", f"{esc(pre.get('img_size'))} px, {esc(pre.get('in_chans'))} channel(s)"])
    if info:
        trained = f"{esc(info.get('epochs', '?'))} epochs"
        if info.get("best_epoch") is not None or (meta.get("extra") or {}).get("best_epoch") is not None:
            best = info.get("best_epoch", (meta.get("extra") or {}).get("best_epoch"))
            trained += f" (best checkpoint: epoch {esc(best)})"
        trained += f", {fmt_seconds(info.get('wall_s'))}"
        if info.get("images_seen"):
            trained += f", {info['images_seen']:,} images seen"
        if info.get("hit_time_cap"):
            trained += ", stopped by the time cap (train.max_minutes)"
        if info.get("resumed"):
            trained += ", resumed"
        facts.append(["training", trained])
        cpu = info.get("cpu") if isinstance(info.get("cpu"), dict) else {}
        where = [esc(info["device"])] if info.get("device") else []
        if cpu.get("model"):
            where.append(esc(cpu["model"]) + (f" ({esc(cpu['capability'])})" if cpu.get("capability") else ""))
        if info.get("precision"):
            where.append(f"precision {esc(info['precision'])}")
        if where:
            facts.append(["device", " · ".join(where)])
        for stage in info.get("upstream") or []:
            facts.append(
                [
                    f"built on ({esc(stage.get('role'))})",
                    f"{esc(stage.get('path'))}: {fmt_seconds(stage.get('wall_s'))}, "
                    f"{esc(stage.get('epochs', '?'))} epochs",
                ]
            )
        if info.get("upstream") and info.get("budget_wall_s") is not None:
            facts.append(["whole budget", fmt_seconds(info["budget_wall_s"])])
        prov = [f"popevit {info['popevit_version']}" if info.get("popevit_version") else ""]
        if info.get("git_commit"):
            prov.append(f"commit {str(info['git_commit'])[:10]}")
        if info.get("manifest_sha256"):
            prov.append(f"manifest sha256 {str(info['manifest_sha256'])[:12]}")
        if any(prov):
            facts.append(["provenance", esc(", ".join(p for p in prov if p))])
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
    desc = [f"n = {result.get('n')} ({fmt_counts(result)})"]
    if src.get("skipped"):
        desc.append(f"{len(src['skipped'])} unreadable files skipped")
    desc.append(f"test-time flip: {'yes' if result.get('tta') else 'no'}")
    if result.get("img_size"):
        desc.append(f"input {result['img_size']} px")
    desc.append(
        f"95% {esc(boot.get('method', 'percentile'))} bootstrap CIs over images, {esc(boot.get('n_boot'))} resamples"
    )
    out = [f"<h3>Evaluation '{esc(ev.tag)}': {esc(what)}</h3>", f"<p>{'; '.join(desc)}.</p>"]
    cal = result.get("calibration")
    if cal:
        out.append(
            f"<p>Temperature-scaled: T = {fmt_num(cal.get('temperature'))}, fitted on "
            f"{esc((cal.get('fit_on') or {}).get('n'))} validation images"
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
            row = [esc(NAMES.get(name, name)), fmt_ci(result["metrics"][name], 4)]
            if dedup:
                row.append(fmt_ci(dedup["metrics"].get(name), 4))
            rows.append(row)
    out.append(html_table(header, rows))
    if dedup:
        out.append(
            f"<p class='muted'>De-duplicated subset: {dedup['n_removed']} of {result['n']} images removed "
            f"({dedup.get('n_exact_duplicates', '?')} exact, {dedup.get('n_near_duplicates', '?')} near "
            f"duplicates of {dedup.get('n_reference', '?')} reference images).</p>"
        )
    classes = result.get("classes") or []
    rows = [[esc(c), *[fmt_ci(result["metrics"].get(f"{s}/{c}")) for s in PER_CLASS]] for c in classes]
    out.append("<h4>Per class (one-vs-rest)</h4>" + html_table(["class", *PER_CLASS], rows))
    figs = _figures(ev, tmp)
    confusion = [f for f in figs if f[1] == "confusion_matrix"]
    others = [f for f in figs if f[1] != "confusion_matrix"]
    for path, name in confusion:
        out.append(html_figure(path, f"{name.replace('_', ' ')}: {run_name(ev.run)}, {what}"))
    if others:
        out.append(
            "<div class='grid'>"
            + "".join(html_figure(p, f"{n.replace('_', ' ')}: {run_name(ev.run)}, {what}") for p, n in others)
            + "</div>"
        )
    dedup_figs = [ev.folder / name for name in ((dedup or {}).get("plots") or {}).values()]
    dedup_figs = [f for f in dedup_figs if f.is_file()]
    if dedup_figs:
        out.append(
            "<h4>De-duplicated subset</h4><div class='grid'>"
            + "".join(html_figure(f, f.stem.replace("_", " ")) for f in dedup_figs)
            + "</div>"
        )
    return "\n".join(out)


def run_section(run: Path, evals: list[Evaluation], tmp: Path) -> str:
    out = [
        f"<h2 id='run-{esc(run_name(run))}'>Run {esc(run_name(run))}</h2>",
        html_table(None, _facts(run), cls="facts"),
    ]
    if (run / "config.yaml").is_file():
        out.append(
            f"<details><summary>config.yaml</summary><pre>{esc((run / 'config.yaml').read_text())}</pre></details>"
        )
    out.append("<h3>Data</h3>" + _data_summary(run))
    curves = run / "logs" / "csv" / "metrics.csv"
    if curves.is_file():
        png = plot_training_curves(curves, tmp / f"{run_name(run)}_curves.png", title=named(run))
        if png is not None:
            out.append("<h3>Training curves</h3>" + html_figure(png, f"training curves of {run_name(run)}"))
    val = read_optional_json(run / "val_metrics.json")
    if isinstance(val, dict) and val:
        shown = {k: v for k, v in val.items() if isinstance(v, int | float)}
        out.append(
            "<h3>Validation metrics of the best checkpoint</h3>"
            + html_table(["metric", "value"], [[esc(k.removeprefix("val/")), fmt_num(v, 4)] for k, v in shown.items()])
        )
    if not evals:
        out.append(f"<p class='warn'>No evaluation found: run <code>popevit evaluate {esc(run)}</code> first.</p>")
    for ev in evals:
        out.append(_eval_section(ev, tmp))
    return "\n".join(out)


def comparison_section(
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
        result = computed.get(tag) or compare_tag(groups, evals, tag, n_boot, seed)
        if isinstance(result, str):
            out.append(f"<h3>{esc(tag)}</h3><p class='warn'>{esc(result)}</p>")
            continue
        out.append(f"<h3>On evaluation '{esc(tag)}'</h3>" + markdown_tables_to_html(to_markdown(result)))
    return "\n".join(out)
