"""The report page's HTML building blocks: the stylesheet, escaping, inlined figures, tables and number formats.

Everything here turns values into HTML text; nothing reads a run folder. :mod:`popevit.evaluation.report` assembles
the page from the sections of :mod:`popevit.evaluation.report_answer` and :mod:`popevit.evaluation.report_runs`.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

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


def paren(text: str, name: str = "") -> str:
    return f" ({esc(text)})" if text and text != name else ""


def signed(value: float) -> str:
    """``+0.012`` / ``-0.012``, and ``+0.000`` for a difference that rounds to zero (never ``-0.000``)."""
    return f"{(round(value, 3) or 0.0):+.3f}"


def under(text: str, name: str) -> str:
    """``text`` on a muted second line of a table cell, unless it repeats ``name``."""
    return f"<br><span class='muted'>{esc(text)}</span>" if text and text != name else ""


def esc(x: Any) -> str:
    return html.escape(str(x))


def html_img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def html_figure(path: Path, caption: str) -> str:
    return f"<figure>{html_img(path, caption)}<figcaption>{esc(caption)}</figcaption></figure>"


def html_table(
    header: Sequence[str] | None, rows: Sequence[Sequence[Any]], row_class: Sequence[str] | None = None, cls: str = ""
) -> str:
    head = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>" if header else ""
    trs = []
    for i, row in enumerate(rows):
        cls = f" class='{row_class[i]}'" if row_class and row_class[i] else ""
        trs.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    return f"<table{f' class={cls!r}' if cls else ''}>{head}{''.join(trs)}</table>"


def fmt_num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def fmt_ci(m: dict[str, Any] | None, digits: int = 3) -> str:
    """``0.950 [0.920, 0.975]`` with the interval greyed; ``n/a`` where undefined, empty when absent."""
    if m is None:
        return ""
    if m.get("value") is None or m["value"] != m["value"] or m.get("lo") is None:
        return "n/a"
    return f"{m['value']:.{digits}f} <span class='ci'>[{m['lo']:.{digits}f}, {m['hi']:.{digits}f}]</span>"


def fmt_p(p: float | None) -> str:
    if p is None or not np.isfinite(p):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else "&lt; 1e-4"


def fmt_counts(result: dict[str, Any]) -> str:
    counts = result.get("counts") or {}
    return ", ".join(f"{esc(c)} {k}" for c, k in counts.items())


def fmt_mapping(label_map: Any) -> str:
    """``glioma, meningioma, pituitary → tumor; notumor → notumor`` from a class mapping."""
    if not isinstance(label_map, dict):
        return esc(label_map)
    by_target: dict[str, list[str]] = {}
    for src, dst in label_map.items():
        by_target.setdefault(str(dst), []).append(str(src))
    return "; ".join(f"{esc(', '.join(s))} → {esc(t)}" for t, s in by_target.items())


def fmt_seconds(s: Any) -> str:
    if not isinstance(s, int | float):
        return "?"
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def markdown_tables_to_html(md: str) -> str:
    """Render the simple Markdown of :func:`popevit.evaluation.compare.to_markdown` (headings, tables, text)."""
    out, table = [], []

    def flush() -> None:
        if table:
            cells = [[c.strip() for c in row.strip().strip("|").split("|")] for row in table]
            out.append(html_table(cells[0], [[esc(c) for c in r] for r in cells[2:]]))
            table.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("## "):
            out.append(f"<h4>{esc(line[3:])}</h4>")
        elif line.startswith("# "):
            out.append(f"<p><b>{esc(line[2:])}</b></p>")
        elif line.strip():
            out.append(f"<p class='muted'>{esc(line)}</p>")
    flush()
    return "\n".join(out)
