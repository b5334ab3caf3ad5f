"""``popevit demo``: the main job end to end on built-in synthetic phantoms.

Commands import what they run inside their functions (torch, Lightning, timm and popevit's modules built on them): a
heavy import each, kept out of ``popevit --help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from popevit.cli.errors import user_errors

_DEFAULT = None  # the defaults live in popevit.demo.DemoSettings


def demo(
    out: Annotated[Path, typer.Option(help="output folder")] = Path("runs/demo"),
    per_class: Annotated[int | None, typer.Option(help="phantom images per class (default 250)", min=5)] = _DEFAULT,
    epochs: Annotated[int | None, typer.Option(help="training epochs per model (default 25)", min=1)] = _DEFAULT,
    models: Annotated[
        str | None, typer.Option(help="comma list of pope, rope_axial, resnet18 (default: pope,rope_axial)")
    ] = _DEFAULT,
    seed: Annotated[int, typer.Option(help="seed for phantoms, split, training and bootstrap")] = 0,
) -> None:
    """Phantoms -> split -> train PoPE-ViT and RoPE-ViT (ResNet18 too with --models) -> evaluate -> compare ->
    explain -> report.html."""
    import dataclasses
    import os
    import time

    from popevit.demo import DemoSettings, format_table, run_demo

    given = {"per_class": per_class, "epochs": epochs, "seed": seed}
    if models is not None:
        given["models"] = tuple(m.strip() for m in models.split(",") if m.strip())
    settings = dataclasses.replace(DemoSettings(), **{k: v for k, v in given.items() if v is not None})
    t0, cpu0 = time.perf_counter(), os.times()
    with user_errors():
        result = run_demo(out, settings, echo=typer.echo)
    n = result.rows[0].n
    typer.echo(f"\nHeld-out test split ({n} phantoms, duplicate-grouped), 95% bootstrap CIs, paired tests:\n")
    typer.echo(format_table(result))
    cpu = os.times()
    cpu_s = sum(cpu[:4]) - sum(cpu0[:4])  # user + system, this process and its workers
    typer.echo(f"\nfinished in {time.perf_counter() - t0:.0f} s ({cpu_s:.0f} CPU-seconds)")
    typer.echo("  per step, wall / CPU s: " + ", ".join(f"{k} {w:.0f}/{c:.0f}" for k, (w, c) in result.timings.items()))
    typer.echo(f"report: {result.report}")
