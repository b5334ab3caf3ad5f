"""``popevit pretrain``: self-supervised (SimMIM) pretraining on the training images of a split.

Commands import what they run inside their functions (torch, Lightning, timm and popevit's modules built on them): a
heavy import each, kept out of ``popevit --help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from popevit.cli.errors import user_errors
from popevit.cli.train import source_overrides


def pretrain(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML (configs/experiments/simmim_*)")] = None,
    data: Annotated[Path | None, typer.Option(help="image folder; split by duplicate group into the run")] = None,
    manifest: Annotated[Path | None, typer.Option(help="manifest CSV from `popevit data split`")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override, e.g. --set pretrain.mask_ratio=0.5")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="run folder (default runs/<config name>)")] = None,
    resume: Annotated[bool, typer.Option(help="continue from OUT/checkpoints/last.ckpt")] = False,
) -> None:
    """Masked-image pretraining of a popevit ViT on the split's training images only (labels unused).

    Writes OUT/encoder.safetensors; fine-tune it with `popevit train --config ... --init OUT/encoder.safetensors`,
    using the same manifest so that validation and test images stay unseen.
    """
    from popevit.config import ConfigError, load_config
    from popevit.data.location import data_overrides
    from popevit.pretrain.run import pretrain as run_pretrain
    from popevit.training import RunDirError

    with user_errors(ConfigError, RunDirError, TypeError):
        overrides = source_overrides(set_, data, manifest)
        cfg = load_config(config, overrides + data_overrides(load_config(config, overrides)))
        result = run_pretrain(cfg, Path(out) if out is not None else Path("runs") / cfg.name, resume=resume)
    typer.echo(
        f"done in {result.wall_s:.0f} s, {result.epochs} epochs; best validation reconstruction loss "
        f"{result.best_val_loss:.4f}"
    )
    typer.echo(f"encoder weights: {result.encoder}  (popevit train --init {result.encoder})")
