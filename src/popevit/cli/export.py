"""``popevit export RUN``: one ONNX or torch.export file with the model's classes, preprocessing and card.

Commands import what they run inside their functions (torch, Lightning, timm and popevit's modules built on them): a
heavy import each, kept out of ``popevit --help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from popevit.cli.errors import user_errors


def export(
    run: Annotated[Path, typer.Argument(help="run folder (holds model.safetensors + model.json)")],
    fmt: Annotated[str, typer.Option("--format", help="onnx | pt2 (torch.export; also: torchscript)")] = "onnx",
    out: Annotated[Path | None, typer.Option(help="output file (default RUN/model.onnx or RUN/model.pt2)")] = None,
    img_size: Annotated[int | None, typer.Option(min=8, help="input size (default: the training size)")] = None,
    opset: Annotated[int, typer.Option(min=17, help="ONNX opset")] = 18,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="replace an existing output file")] = False,
) -> None:
    """Export a run for deployment; the file is checked against PyTorch (within 1e-4) before it is kept."""
    from popevit.serve.export import export_run, normalize_format

    with user_errors(FileExistsError, RuntimeError):
        if fmt.strip().lower() == "torchscript":
            typer.echo(
                "torchscript: writing a torch.export program (.pt2), TorchScript's successor; torch.jit.script cannot "
                "compile the ViT's positional-encoding interface and is deprecated in this torch",
                err=True,
            )
        result = export_run(run, normalize_format(fmt), out, img_size=img_size, opset=opset, overwrite=overwrite,
                            echo=lambda m: typer.echo(m, err=True))  # fmt: skip
    rec = result.record
    typer.echo(
        f"wrote {result.path} ({result.format}; input image (batch, 1, {rec['preprocess']['img_size']}, "
        f"{rec['preprocess']['img_size']}) in [0, 1]; outputs {', '.join(rec['outputs'])}; "
        f"max |difference| to PyTorch {result.max_abs_diff:.2e})"
    )
    if rec["ood"] is None:
        typer.echo(f"note: exported without an OOD flag: {rec['ood_note']}", err=True)
    typer.echo(f"use it: popevit predict {result.path} IMAGES... --out predictions")
