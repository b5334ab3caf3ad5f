"""``popevit explain``: heatmaps, galleries and faithfulness numbers for a trained run.

Commands import what they run inside their functions (torch, Lightning, timm and popevit's modules built on them): a
heavy import each, kept out of ``popevit --help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from popevit.cli.errors import user_errors


def explain(
    run: Annotated[Path, typer.Argument(help="run folder (holds model.safetensors + model.json)")],
    images: Annotated[
        list[Path] | None, typer.Option("--images", help="image files or folders (repeatable); labels from folders")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="image folder in any layout the data layer reads")] = None,
    manifest: Annotated[Path | None, typer.Option(help="manifest CSV (default: the run's own manifest)")] = None,
    split: Annotated[str, typer.Option(help="manifest split")] = "test",
    method: Annotated[str, typer.Option(help="rollout | grad-rollout | gradcam, a comma list, or all")] = "rollout",
    target: Annotated[str, typer.Option(help="predicted | true | a class name")] = "predicted",
    out: Annotated[Path | None, typer.Option(help="output folder (default RUN/explain/<method>)")] = None,
    faithfulness: Annotated[
        bool, typer.Option("--faithfulness", help="measure deletion/insertion AUC, mask mass, pointing game -> JSON")
    ] = False,
    max_images: Annotated[int, typer.Option(help="images to explain (mistakes and confident ones first)")] = 24,
    head_fusion: Annotated[str, typer.Option(help="rollout head fusion: mean | max | min")] = "mean",
    discard_ratio: Annotated[float, typer.Option(help="rollout: fraction of weakest attention discarded")] = 0.0,
    device: Annotated[str | None, typer.Option(help="cpu, cuda, ... (default: CUDA when available)")] = None,
    seed: Annotated[int, typer.Option(help="selection and random-baseline seed")] = 0,
) -> None:
    """Explain a run's predictions: overlays beside the original, galleries of mistakes and confident hits."""
    from popevit.explain import explain_run

    with user_errors():
        result = explain_run(
            run, images=images or None, data=data, manifest=manifest, split=split, method=method, target=target,
            out=out, faithfulness=faithfulness, max_images=max_images, head_fusion=head_fusion,
            discard_ratio=discard_ratio, device=device, seed=seed,
        )  # fmt: skip
    if result.skipped:
        from popevit.data.checks import Skip, format_skipped, write_skipped

        listing = write_skipped(result.out / "skipped.csv", [Skip(p, r) for p, r in result.skipped])
        typer.echo(format_skipped([Skip(p, r) for p, r in result.skipped], listing=listing), err=True)
    typer.echo(f"explained {len(result.paths)} images with {', '.join(result.methods)} -> {result.out}")
    if result.faithfulness is not None:
        f = result.faithfulness
        rnd = f["random"]
        for name, v in f["methods"].items():
            typer.echo(f"  {name:13s} deletion AUC {v['deletion_auc']:.3f}  insertion AUC {v['insertion_auc']:.3f}")
        typer.echo(f"  {'random':13s} deletion AUC {rnd['deletion_auc']:.3f}  insertion AUC {rnd['insertion_auc']:.3f}")
        if f["mask"] is not None:
            typer.echo(f"  masks: {f['mask']['images']} images, area fraction {f['mask']['area_fraction']:.3f}")
            for name, v in f["mask"]["methods"].items():
                typer.echo(f"  {name:13s} mass in mask {v['mass_share']:.3f}  pointing {v['pointing_hit_rate']:.3f}")
        typer.echo(f"  written to {result.out / 'faithfulness.json'}")
