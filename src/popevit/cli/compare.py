"""``popevit compare RUN_A RUN_B ...``: paired tests between runs or seed groups on the same images.

Commands import what they run inside their functions (torch, Lightning, timm and popevit's modules built on them): a
heavy import each, kept out of ``popevit --help``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from popevit.cli.errors import user_errors


def compare(
    runs: list[Path] = typer.Argument(
        ..., help="Run folders; seed suffixes (-s0, _seed1) group runs: runs/a-s* runs/b-s*."
    ),
    data: Path | None = typer.Option(None, "--data", help="Image folder to compare on."),
    manifest: Path | None = typer.Option(None, "--manifest", help="Manifest CSV to compare on (with --split)."),
    split: str = typer.Option("test", "--split", help="Manifest split. Default source: each run's manifest.csv."),
    tta: bool = typer.Option(False, "--tta", help="Use horizontal-flip test-time augmentation."),
    calibrate: bool = typer.Option(
        False, "--calibrate", help="Temperature-scaled probabilities (T fitted on each run's validation split)."
    ),
    img_size: int | None = typer.Option(
        None, "--img-size", min=8, help="Compare at this input size (resolution extrapolation; patch multiples)."
    ),
    label_map: str | None = typer.Option(
        None,
        "--label-map",
        help="Compare on other classes, e.g. 'yes=tumor,no=notumor,glioma|meningioma|pituitary=tumor'.",
    ),
    source_name: str | None = typer.Option(
        None, "--source", help="With a manifest of several sources (data split --add): compare on this source's rows."
    ),
    no_group: bool = typer.Option(False, "--no-group", help="Treat every run as its own group."),
    out: Path = typer.Option(Path("runs/compare"), "--out", help="Folder for compare.json and compare.md."),
    n_boot: int = typer.Option(1000, "--n-boot", min=1, help="Paired bootstrap resamples."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    device: str | None = typer.Option(None, "--device", help="torch device (default: cuda if available)."),
) -> None:
    """Paired bootstrap CIs of differences, McNemar's exact test and DeLong's test, printed and saved."""
    from popevit.evaluation.compare import compare_runs, group_runs, run_name, to_markdown

    groups = [[r] for r in runs] if no_group else group_runs(runs)
    if len(groups) < 2:
        raise typer.BadParameter(
            f"all {len(runs)} runs fall in one group ({[run_name(r) for r in runs]}); pass runs of two recipes, "
            "or --no-group to compare the runs one by one",
            param_hint="RUNS",
        )
    with user_errors():
        result = compare_runs(
            groups,
            data=data,
            manifest=manifest,
            split=split,
            tta=tta,
            calibrate=calibrate,
            img_size=img_size,
            n_boot=n_boot,
            seed=seed,
            out=out,
            batch_size=batch_size,
            device=device,
            label_map=label_map,
            source_name=source_name,
        )
    typer.echo(to_markdown(result))
    typer.echo(f"wrote {out}/compare.json and {out}/compare.md")
