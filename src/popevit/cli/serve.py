"""``popevit serve RUN``: a local web app to try a run on one image, DICOM or NIfTI file.

Commands import what they run inside their functions (torch, Lightning, timm and popevit's modules built on them): a
heavy import each, kept out of ``popevit --help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from popevit.cli.errors import user_errors


def serve(
    run: Annotated[Path, typer.Argument(help="run folder (holds model.safetensors + model.json)")],
    host: Annotated[str, typer.Option(help="interface to bind; 0.0.0.0 exposes the app to the network")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port")] = 7860,
    explain: Annotated[
        str | None, typer.Option(help="rollout | grad-rollout | gradcam (default: rollout for ViTs, else gradcam)")
    ] = None,
    device: Annotated[str | None, typer.Option(help="torch device (default: CUDA, else CPU)")] = None,
) -> None:
    """Serve a run in the browser (Gradio, offline): drop a file, see probabilities, OOD flag, overlay, model card."""
    from popevit.serve.app import serve as run_app

    with user_errors(OSError):
        run_app(run, host=host, port=port, device=device, explain=explain, echo=lambda m: typer.echo(m, err=True))
