"""``popevit models``: every registered model and positional encoding with total and PE parameter counts.

Commands import what they run inside their functions (torch, Lightning, timm and popevit's modules built on them): a
heavy import each, kept out of ``popevit --help``.
"""

from __future__ import annotations

import typer


def models(
    preset: str = typer.Option("vit_p16_w192_d6", help="ViT preset used for the per-PE table"),
    img_size: int = typer.Option(None, help="reference image size (default: each preset's nominal size, 224 else)"),
    num_classes: int = typer.Option(4, help="classifier outputs"),
    in_chans: int = typer.Option(1, help="input channels"),
) -> None:
    """List models and positional encodings with parameter counts (built on the meta device: no memory, fast)."""
    import torch

    from popevit.models import MODELS, POS_ENCS, create_model, is_vit, list_models, list_pos_encs
    from popevit.models.factory import parameter_counts
    from popevit.models.presets import PRESETS

    if preset not in PRESETS:
        raise typer.BadParameter(f"{preset!r} is not a ViT preset; pick one of {list(PRESETS)}", param_hint="--preset")

    def size_of(name: str) -> int:
        return img_size or (PRESETS[name].img_size if name in PRESETS else 224)

    def counts(name: str, **kw) -> tuple[int, int]:
        with torch.device("meta"):
            model = create_model(name, num_classes=num_classes, in_chans=in_chans, img_size=size_of(name), **kw)
        return parameter_counts(model)

    typer.echo(f"{'model':<20} {'kind':<8} {'px':>4} {'params':>12} {'PE params':>10}  description")
    for name in list_models():
        total, pe = counts(name)
        kind = "vit" if is_vit(name) else "baseline"
        desc = MODELS.get(name).description
        typer.echo(f"{name:<20} {kind:<8} {size_of(name):>4} {total:>12,} {pe:>10,}  {desc}")
    typer.echo(f"\npositional encodings on {preset} ({size_of(preset)} px):")
    typer.echo(f"{'pos_enc':<12} {'params':>12} {'PE params':>10} {'q/k width':>9}  learned, no weight decay")
    for pe_name in list_pos_encs():
        total, pe = counts(preset, pos_enc=pe_name)
        with torch.device("meta"):
            nwd = create_model(preset, num_classes=num_classes, img_size=size_of(preset), pos_enc=pe_name)
        learned = ", ".join(sorted(n for n in nwd.no_weight_decay() if n.startswith("pos_enc."))) or "-"
        width = f"{POS_ENCS.get(pe_name).qk_expansion}x D"
        typer.echo(f"{pe_name:<12} {total:>12,} {pe:>10,} {width:>9}  {learned}")
