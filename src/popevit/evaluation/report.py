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

This module assembles the page; the sections live in :mod:`popevit.evaluation.report_answer` (1) and
:mod:`popevit.evaluation.report_runs` (2-4), what they read in :mod:`popevit.evaluation.report_inputs`, and the HTML
building blocks and stylesheet in :mod:`popevit.evaluation.report_html`.
"""

from __future__ import annotations

import datetime as _dt
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from popevit import __version__
from popevit.evaluation.compare import group_runs, run_name
from popevit.evaluation.report_answer import answer_section, compare_tag
from popevit.evaluation.report_html import CSS, esc
from popevit.evaluation.report_inputs import RANKED, load_evaluations, primary_tag
from popevit.evaluation.report_runs import comparison_section, explain_section, run_section
from popevit.io import atomic_write_text


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
        computed[tag] = compare_tag(groups, evals, tag, n_boot, seed)
    stamp = _dt.datetime.now().isoformat(timespec="seconds")
    with tempfile.TemporaryDirectory(prefix="popevit-report-") as tmp:
        sections = [answer_section(groups, evals, tag, computed.get(tag), metric), explain_section(runs)]
        sections += [run_section(r, evals[r], Path(tmp)) for r in runs]
    if compare and len(groups) >= 2:
        sections.append(comparison_section(groups, evals, computed, n_boot, seed))
    toc = "".join(f"<a href='#run-{esc(run_name(r))}'>{esc(run_name(r))}</a>" for r in runs)
    page = (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{CSS}</style></head><body><h1>{esc(title)}</h1>"
        f"<p class='muted toc'>popevit {esc(__version__)}, generated {esc(stamp)}. Runs: {toc}"
        + ("<a href='#paired'>paired tests</a>" if compare and len(groups) >= 2 else "")
        + "</p>"
        + "\n".join(s for s in sections if s)
        + "</body></html>\n"
    )
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_html, page)
    return out_html
