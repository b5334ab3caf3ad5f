"""``popevit predict RUN INPUT...``: classify images, DICOM and NIfTI with a run or an exported model.

Commands import what they run inside their functions (torch, Lightning, timm and popevit's modules built on them): a
heavy import each, kept out of ``popevit --help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from popevit.cli.errors import user_errors


def predict(
    model: Annotated[Path, typer.Argument(help="run folder, or a model.onnx / model.pt2 from `popevit export`")],
    inputs: Annotated[
        list[Path], typer.Argument(help="image files, folders (recursive), DICOM files or series, NIfTI volumes")
    ],
    out: Annotated[Path, typer.Option(help="folder for predictions.csv, predictions.json and overlays")] = Path(
        "predictions"
    ),
    explain: Annotated[
        str | None, typer.Option(help="write an overlay per slice: rollout | grad-rollout | gradcam (run folders)")
    ] = None,
    tta: Annotated[bool, typer.Option("--tta", help="average probabilities over a horizontal flip")] = False,
    batch_size: Annotated[int, typer.Option(min=1, help="slices per forward pass")] = 32,
    device: Annotated[str | None, typer.Option(help="torch device for a run folder (default: CUDA, else CPU)")] = None,
    slices: Annotated[str, typer.Option(help="slices of each volume: all | middle | A:B (B excluded)")] = "all",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace earlier predictions in --out")] = False,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads (default: the backend's)")] = None,
    max_rows: Annotated[int, typer.Option(min=0, help="rows of the printed table")] = 40,
) -> None:
    """Predict the class of every image or slice: a table, predictions.csv and predictions.json with probabilities,
    the out-of-distribution flag and per-volume summaries.

    Exit code 0 when every input was predicted, 2 when some could not be read (each is listed with the reason; the
    others are still predicted and written).
    """
    from popevit.serve.predict import format_table
    from popevit.serve.predict import predict as run_predict

    echo = lambda msg: typer.echo(msg, err=True)  # noqa: E731  (progress on stderr, the table on stdout)
    with user_errors(FileExistsError, RuntimeError):
        result = run_predict(
            model, inputs, out=out, explain=explain, tta=tta, batch_size=batch_size, device=device, slices=slices,
            overwrite=overwrite, threads=threads, echo=echo,
        )  # fmt: skip
    if result.records:
        typer.echo(format_table(result, max_rows))
    info = result.info
    t = "none" if info.temperature is None else f"{info.temperature:.3f}"
    typer.echo(f"\ntemperature: {t} ({info.temperature_source})")
    if info.ood is None:
        typer.echo(f"OOD flag: unavailable ({info.ood_note})")
    else:
        n_ood = sum(r["ood"] for r in result.records)
        typer.echo(f"OOD flag: {n_ood} of {len(result.records)} slices flagged (do not trust those predictions)")
    if result.skipped:
        typer.echo(f"skipped {len(result.skipped)} files that are not images, DICOM or NIfTI (see predictions.json)")
    typer.echo(f"wrote {out / 'predictions.csv'} and {out / 'predictions.json'}")
    for f in result.failed:
        typer.echo(f"error: {f.path}: {f.reason}", err=True)
    if result.failed:
        typer.echo(f"{len(result.failed)} inputs could not be read; {len(result.records)} slices predicted", err=True)
        raise typer.Exit(2)
