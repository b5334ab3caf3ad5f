"""``popevit evaluate RUN``: metrics with bootstrap CIs, predictions and plots for a trained run.

Commands import what they run inside their functions (torch, Lightning, timm and popevit's modules built on them): a
heavy import each, kept out of ``popevit --help``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from popevit.cli.errors import user_errors


def report_skipped(source: dict, listing: Path) -> None:
    """Print on stderr the files an evaluation skipped (grouped by reason) and warnings about its classes."""
    from popevit.data.checks import Skip, format_skipped

    skipped = [Skip(Path(p), reason) for p, reason in source.get("skipped", [])]
    if text := format_skipped(skipped, listing=listing):
        typer.echo(text, err=True)
    for warning in source.get("warnings", []):
        typer.echo(f"warning: {warning}", err=True)


def evaluate(
    run: Path = typer.Argument(..., help="Run folder (holds model.safetensors + model.json)."),
    data: Path | None = typer.Option(None, "--data", help="Image folder to evaluate on (all images; any layout)."),
    manifest: Path | None = typer.Option(None, "--manifest", help="Manifest CSV to evaluate on (with --split)."),
    split: str = typer.Option("test", "--split", help="Manifest split. Default source: the run's manifest.csv."),
    tta: bool = typer.Option(False, "--tta", help="Average probabilities over a horizontal flip."),
    calibrate: bool = typer.Option(
        False, "--calibrate", help="Temperature-scale with T fitted on the run's validation split (RUN/eval/<tag>-ts)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Output folder (default RUN/eval/<tag>)."),
    dedup_against: Path | None = typer.Option(
        None,
        "--dedup-against",
        help="Training folder or manifest: also report the subset with no duplicate there (default for --data: the "
        "run's own training split).",
    ),
    no_dedup: bool = typer.Option(False, "--no-dedup", help="Do not report the de-duplicated subset by default."),
    source_name: str | None = typer.Option(
        None, "--source", help="With a manifest of several sources (data split --add): evaluate this source's rows."
    ),
    label_map: str | None = typer.Option(
        None,
        "--label-map",
        help="Map the model's and the data's classes onto shared targets, e.g. "
        "'yes=tumor,no=notumor,glioma|meningioma|pituitary=tumor' (model probabilities are summed per target).",
    ),
    n_boot: int = typer.Option(1000, "--n-boot", min=1, help="Bootstrap resamples for the 95% CIs."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    device: str | None = typer.Option(None, "--device", help="torch device (default: cuda if available)."),
    img_size: int | None = typer.Option(
        None, "--img-size", min=8, help="Evaluate at this input size (resolution extrapolation; a patch multiple)."
    ),
) -> None:
    """Evaluate a run: predictions.csv, metrics.json (95% bootstrap CIs) and PNG plots."""
    from popevit.evaluation.evaluate import SKIPPED, evaluate_run, format_metrics

    with user_errors():
        result = evaluate_run(
            run,
            data=data,
            manifest=manifest,
            split=split,
            tta=tta,
            out=out,
            dedup_against=dedup_against,
            n_boot=n_boot,
            seed=seed,
            batch_size=batch_size,
            device=device,
            img_size=img_size,
            calibrate=calibrate,
            label_map=label_map,
            dedup=not no_dedup,
            source_name=source_name,
        )
    if result["source"].get("external"):
        mapped = f" with label map {','.join(result['label_map']['rules'])}" if result.get("label_map") else ""
        typer.echo(f"external validation on {result['source']['name']!r}{mapped}: classes {result['classes']}\n")
    report_skipped(result["source"], Path(result["out"]) / SKIPPED)
    typer.echo(format_metrics(result))
    if calibrate:
        c = result["calibration"]
        typer.echo(
            f"\ntemperature {c['temperature']:.3f} (fitted on {c['fit_on']['n']} validation images; val NLL "
            f"{c['val_nll']['before']:.4f} -> {c['val_nll']['after']:.4f}); "
            f"uncalibrated ECE {c['uncalibrated']['ece']:.4f}"
        )
    typer.echo(f"\nwrote {result['out']}/predictions.csv, metrics.json and plots")
