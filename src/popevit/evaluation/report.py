"""``popevit report``: one self-contained HTML file describing one or more runs.

Everything is inlined (PNG figures as base64 ``data:`` URIs, CSS in a ``<style>`` element, no JavaScript), so the file
opens offline and can be mailed or archived as is. Per run: the resolved config, run facts (``run.json``), a data
summary (class counts per split from ``manifest.csv``, duplicate clusters, and any leakage-audit JSON in the run
folder, e.g. the shortcut probe), training curves (``logs/csv/metrics.csv``), the validation metrics logged by
training, and every evaluation under ``RUN/eval/*`` (metric tables with 95% CIs, the de-duplicated subset side by
side, figures). With several runs, a comparison section (:mod:`popevit.evaluation.compare`) follows.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import json
import tempfile
from collections import Counter
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

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
from popevit.evaluation.evaluate import EVAL_DIR, METRICS
from popevit.evaluation.plots import plot_training_curves
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

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1200px;
color:#222;line-height:1.4;padding:0 16px}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #bbb;margin-top:2em}h3{margin-top:1.5em}
table{border-collapse:collapse;margin:8px 0 16px;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}
pre{background:#f7f7f7;border:1px solid #ddd;padding:8px;overflow-x:auto;font-size:12px}
img{max-width:100%;border:1px solid #eee;margin:4px}
.figs{display:flex;flex-wrap:wrap;gap:8px;align-items:flex-start}.figs img{max-width:560px}
.muted{color:#777;font-size:12px}.warn{color:#a33}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _ci(m: dict[str, float] | None) -> str:
    if m is None:
        return ""
    if m.get("value") is None or m["value"] != m["value"] or m.get("lo") is None:  # null/NaN: undefined here
        return "n/a"
    return f"{m['value']:.4f} <span class='muted'>[{m['lo']:.4f}, {m['hi']:.4f}]</span>"


def _read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


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


def _eval_section(eval_dir: Path, result: dict[str, Any]) -> str:
    src = result.get("source", {})
    boot = result.get("bootstrap", {})
    desc = ", ".join(f"{k}={v}" for k, v in src.items() if v is not None and k != "skipped")
    if src.get("skipped"):
        desc += f"; {len(src['skipped'])} unreadable files skipped"
    out = [
        f"<h3>Evaluation: {_e(eval_dir.name)}</h3>",
        f"<p>{_e(desc)}; TTA (h-flip): {_e(result.get('tta'))}; n = {result['n']} "
        f"({', '.join(f'{_e(c)}: {k}' for c, k in result.get('counts', {}).items())}). "
        f"95% {_e(boot.get('method', 'percentile'))} bootstrap CIs over images, {_e(boot.get('n_boot'))} "
        f"resamples, seed {_e(boot.get('seed'))}.</p>",
    ]
    dedup = result.get("dedup")
    header = ["metric", f"all images (n={result['n']})"]
    if dedup:
        header.append(f"no duplicate in {Path(dedup['against']).name} (n={dedup['n']})")
    rows = []
    for name in HEADLINE:
        if name in result["metrics"]:
            row = [_e(name), _ci(result["metrics"][name])]
            if dedup:
                row.append(_ci(dedup["metrics"].get(name)))
            rows.append(row)
    out.append(_table(header, rows))
    if dedup:
        out.append(
            f"<p class='muted'>De-duplicated subset: {dedup['n_removed']} of {result['n']} images removed "
            f"({dedup.get('n_exact_duplicates', '?')} exact, {dedup.get('n_near_duplicates', '?')} near "
            f"duplicates of {dedup.get('n_reference', '?')} reference images).</p>"
        )
    classes = result["classes"]
    rows = [[_e(c), *[_ci(result["metrics"].get(f"{s}/{c}")) for s in PER_CLASS]] for c in classes]
    out.append("<h4>Per class (one-vs-rest)</h4>" + _table(["class", *PER_CLASS], rows))
    figs = [eval_dir / name for name in (result.get("plots") or {}).values()]
    figs += [eval_dir / name for name in ((dedup or {}).get("plots") or {}).values()]
    out.append("<div class='figs'>" + "".join(_img(f, f.stem) for f in figs if f.is_file()) + "</div>")
    return "\n".join(out)


def _run_section(run: Path, tmp: Path) -> str:
    out = [f"<h2 id='{_e(run.name)}'>Run {_e(run.name)}</h2>"]
    meta = _read_json(run / "model.json") or {}
    info = _read_json(run / "run.json") or {}
    facts = [["folder", _e(run.resolve())]]
    if meta:
        facts += [
            ["model", _e(meta.get("model", {}).get("name"))],
            ["model kwargs", _e(json.dumps(meta.get("model", {}).get("kwargs", {})))],
            ["classes", _e(", ".join(meta.get("classes", [])))],
        ]
    facts += [[_e(k), _e(v)] for k, v in info.items() if k != "classes"]
    out.append(_table(["", ""], facts))
    if (run / "config.yaml").is_file():
        out.append(
            f"<details><summary>config.yaml</summary><pre>{_e((run / 'config.yaml').read_text())}</pre></details>"
        )
    out.append("<h3>Data</h3>" + _data_summary(run))
    curves = run / "logs" / "csv" / "metrics.csv"
    if curves.is_file():
        png = plot_training_curves(curves, tmp / f"{run.name}_curves.png")
        if png is not None:
            out.append("<h3>Training curves</h3>" + _img(png, "training curves"))
    val = _read_json(run / "val_metrics.json")
    if val:
        out.append(
            "<h3>Validation metrics logged by training (best checkpoint)</h3>"
            + _table(["metric", "value"], [[_e(k), f"{v:.4f}"] for k, v in val.items()])
        )
    evals = sorted(d for d in (run / EVAL_DIR).glob("*") if (d / METRICS).is_file())
    if not evals:
        out.append(f"<p class='warn'>No evaluation found: run <code>popevit evaluate {_e(run)}</code> first.</p>")
    for d in evals:
        out.append(_eval_section(d, read_json(d / METRICS, "metrics.json of an evaluation")))
    return "\n".join(out)


def _comparison_section(runs: Sequence[Path], n_boot: int, seed: int) -> str:
    """Compare the runs on every evaluation tag that all of them have predictions for."""
    tags = set.intersection(*[{d.name for d in (r / EVAL_DIR).glob("*") if (d / PREDICTIONS).is_file()} for r in runs])
    groups = group_runs(runs)
    if len(groups) < 2:
        groups = [[r] for r in runs]
    out = ["<h2>Comparisons</h2>"]
    if not tags:
        return out[0] + "<p class='muted'>No evaluation tag is shared by all runs; nothing to compare.</p>"
    for tag in sorted(tags):
        flat = [r for g in groups for r in g]
        try:
            preds = align([Predictions.load(r / EVAL_DIR / tag / PREDICTIONS) for r in flat], [str(r) for r in flat])
        except ValueError as err:
            out.append(f"<h3>{_e(tag)}</h3><p class='warn'>{_e(err)}</p>")
            continue
        grouped, k = [], 0
        for g in groups:
            grouped.append(preds[k : k + len(g)])
            k += len(g)
        result = compare_predictions(
            grouped,
            group_names(groups),
            [[run_name(r) for r in g] for g in groups],
            n_boot=n_boot,
            seed=seed,
            pairs={(i, j): match_pairs(groups[i], groups[j]) for i, j in combinations(range(len(groups)), 2)},
        )
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


def build_report(
    runs: Sequence[str | Path],
    out_html: str | Path,
    *,
    title: str = "popevit report",
    compare: bool = True,
    n_boot: int = 1000,
    seed: int = 0,
) -> Path:
    """Write one self-contained HTML report for ``runs``.

    Args:
        runs: run directories (evaluate them first with ``popevit evaluate`` to get metric tables and figures).
        out_html: output file.
        title: page title.
        compare: with >= 2 runs, add paired comparisons on every evaluation all runs share.
        n_boot: bootstrap resamples of the comparisons.
        seed: bootstrap seed of the comparisons.

    Returns:
        ``out_html``.
    """
    runs = [Path(r) for r in runs]
    for r in runs:
        if not r.is_dir():
            raise FileNotFoundError(f"run folder {str(r)!r} not found")
    out_html = Path(out_html)
    stamp = _dt.datetime.now().isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="popevit-report-") as tmp:
        sections = [_run_section(r, Path(tmp)) for r in runs]
    if compare and len(runs) >= 2:
        sections.append(_comparison_section(runs, n_boot, seed))
    toc = " · ".join(f"<a href='#{_e(r.name)}'>{_e(r.name)}</a>" for r in runs)
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1>"
        f"<p class='muted'>popevit {_e(__version__)}, generated {_e(stamp)}. Runs: {toc}</p>"
        + "\n".join(sections)
        + "</body></html>\n"
    )
    out_html.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_html, page)
    return out_html
