"""``popevit report RUN [RUN ...] --out report.html``: one self-contained HTML report.

Commands import what they run inside their functions (torch, Lightning, timm and popevit's modules built on them): a
heavy import each, kept out of ``popevit --help``.
"""

from __future__ import annotations

from pathlib import Path

import typer


def report(
    runs: list[Path] = typer.Argument(..., help="Run folders (evaluate them first with `popevit evaluate`)."),
    out: Path = typer.Option(Path("runs/report.html"), "--out", help="Output HTML file."),
    title: str = typer.Option("popevit report", "--title"),
    no_compare: bool = typer.Option(False, "--no-compare", help="Skip the comparison section."),
    n_boot: int = typer.Option(1000, "--n-boot", min=1, help="Bootstrap resamples of the comparisons."),
    seed: int = typer.Option(0, "--seed"),
    metric: str = typer.Option(
        "accuracy", "--metric", help="What 'best' means on the first screen: accuracy, balanced_accuracy, auroc_macro."
    ),
) -> None:
    """The answer first (best model, comparison with CIs and paired tests, external validation), then every run."""
    from popevit.cli.errors import user_errors
    from popevit.evaluation.report import build_report

    with user_errors(OSError):
        path = build_report(runs, out, title=title, compare=not no_compare, n_boot=n_boot, seed=seed, metric=metric)
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, self-contained)")
