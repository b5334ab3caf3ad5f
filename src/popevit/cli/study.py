"""``popevit study RUNS...``: multi-seed table with CIs, resolution extrapolation and paired tests in one step.

Commands import what they run inside their functions (torch, Lightning, timm and popevit's modules built on them): a
heavy import each, kept out of ``popevit --help``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from popevit.cli.errors import user_errors


def study(
    runs: list[Path] = typer.Argument(..., help="Run folders; seed suffixes (-s0, _seed-1) group them by model."),
    sizes: str = typer.Option(
        "", "--sizes", help="Extra test image sizes for resolution extrapolation, e.g. 160,192,224 (patch multiples)."
    ),
    manifest: Path | None = typer.Option(None, "--manifest", help="Manifest CSV to evaluate on (with --split)."),
    split: str = typer.Option("test", "--split", help="Manifest split. Default source: each run's manifest.csv."),
    out: Path = typer.Option(
        Path("runs/study"),
        "--out",
        help="Folder for study.md/csv/json, extrapolation.png, compare/, compare-<size>px/.",
    ),
    n_boot: int = typer.Option(1000, "--n-boot", min=1, help="Bootstrap resamples for every CI."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    no_tests: bool = typer.Option(False, "--no-tests", help="Skip the paired tests between groups."),
    calibrate: bool = typer.Option(
        False, "--calibrate", help="Temperature-scaled probabilities (T fitted on each run's validation split)."
    ),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    device: str | None = typer.Option(None, "--device", help="torch device (default: cuda if available)."),
) -> None:
    """Seed-mean metrics with 95% CIs per model, AUROC vs test size (extrapolation) and paired tests."""
    from popevit.evaluation.compare import group_runs
    from popevit.evaluation.study import run_study

    try:
        size_list = [int(s) for s in sizes.split(",") if s.strip()]
    except ValueError as err:
        raise typer.BadParameter(
            f"--sizes must be comma-separated integers, got {sizes!r}", param_hint="--sizes"
        ) from err
    with user_errors():
        result = run_study(
            group_runs(runs),
            sizes=size_list,
            manifest=manifest,
            split=split,
            out=out,
            n_boot=n_boot,
            seed=seed,
            batch_size=batch_size,
            device=device,
            paired_tests=not no_tests,
            calibrate=calibrate,
        )
    typer.echo((out / "study.md").read_text(encoding="utf-8"))
    typer.echo(f"wrote {out}/study.md, study.csv, study.json" + (", extrapolation.png" if "plot" in result else ""))
    for path in [result["compare"], *result.get("compare_sizes", [])] if "compare" in result else []:
        typer.echo(f"paired tests: {path}")
