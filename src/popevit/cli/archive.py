"""``popevit archive RUNS... --out DIR``: a run's records and predictions without its weights, to commit.

Commands import what they run inside their functions (torch, Lightning, timm and popevit's modules built on them): a
heavy import each, kept out of ``popevit --help``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from popevit.cli.errors import user_errors


def archive(
    runs: list[Path] = typer.Argument(..., help="Finished, evaluated run folders."),
    out: Path = typer.Option(..., "--out", help="Folder for one archived run per run, e.g. results/NAME/archived."),
) -> None:
    """Keep each run's records and evaluations without its weights, so that `popevit compare` and `popevit study` can
    pair it with other runs after the run folder is gone."""
    from popevit.evaluation.archive import archive_run

    with user_errors(OSError):
        for run in runs:
            dest = archive_run(run, out)
            size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
            tags = sorted(p.name for p in (dest / "eval").iterdir())
            typer.echo(f"archived {run} -> {dest} ({size / 1024:.0f} KiB; evaluations: {', '.join(tags)})")
