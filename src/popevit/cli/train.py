"""``popevit train``: run one experiment config.

Commands import what they run inside their functions (torch, Lightning, timm and popevit's modules built on them): a
heavy import each, kept out of ``popevit --help``.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from popevit.cli.errors import user_errors


def source_overrides(set_: list[str] | None, data: Path | None, manifest: Path | None) -> list[str]:
    """``--set`` items plus the overrides that ``--data`` / ``--manifest`` stand for (one excludes the other)."""
    overrides = list(set_ or [])
    if data is not None:
        overrides += [f"data.data={data}", "data.manifest=null"]
    if manifest is not None:
        overrides += [f"data.manifest={manifest}", "data.data=null"]
    return overrides


def resume_command(out_dir: Path) -> str:
    """The command line that was run, with ``--out`` and ``--resume``: what continues an interrupted run."""
    args = sys.argv[1:]
    if "--out" not in args:
        args += ["--out", str(out_dir)]
    if "--resume" not in args:
        args.append("--resume")
    return " ".join(shlex.quote(a) for a in ["popevit", *args])


def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="experiment YAML (see configs/)")] = None,
    data: Annotated[Path | None, typer.Option(help="image folder; split by duplicate group into the run")] = None,
    manifest: Annotated[Path | None, typer.Option(help="manifest CSV from `popevit data split`")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. --set optim.lr=1e-3")] = None,
    out: Annotated[Path | None, typer.Option(help="run folder (default runs/<config name>)")] = None,
    resume: Annotated[bool, typer.Option(help="continue from OUT/checkpoints/last.ckpt")] = False,
    init: Annotated[Path | None, typer.Option(help="initialise weights from a model.safetensors")] = None,
    devices: Annotated[str | None, typer.Option(help="devices per node (int or auto)")] = None,
    strategy: Annotated[str | None, typer.Option(help="Lightning strategy, e.g. ddp")] = None,
    seed: Annotated[int | None, typer.Option(help="training seed (train.seed)")] = None,
    dataset: Annotated[str | None, typer.Option(help="folder (default), cifar10 or cifar100 (data.dataset)")] = None,
) -> None:
    """Train a model from a config file; the run folder gets config, manifest, checkpoints, logs and the model."""
    from popevit.config import ConfigError, load_config
    from popevit.data.location import data_overrides
    from popevit.training import RunDirError, train_from_files
    from popevit.training.fit import TrainingInterrupted

    overrides = source_overrides(set_, data, manifest)
    if devices is not None:
        overrides.append(f"train.devices={devices}")
    if strategy is not None:
        overrides.append(f"train.strategy={strategy}")
    if seed is not None:
        overrides.append(f"train.seed={seed}")
    if dataset is not None:
        overrides.append(f"data.dataset={dataset}")
    with user_errors(ConfigError, RunDirError):
        base = config
        if base is None and resume and out is not None and (out / "config.yaml").is_file():
            base = out / "config.yaml"  # what train_from_files resumes with
        if base is not None or not resume:  # a resume without a run config fails below, naming what is missing
            overrides += data_overrides(load_config(base, overrides))  # --data, --manifest, else $POPEVIT_DATA
        try:
            result = train_from_files(config, overrides, out, resume=resume, init=init)
        except TrainingInterrupted as err:
            err.args = (f"{err}.\nresume with: {resume_command(err.out_dir)}",)
            raise
    if result.val_metrics:
        per_class = {f"val/auroc_{c}" for c in result.classes}
        shown = ", ".join(f"{k}={v:.4f}" for k, v in sorted(result.val_metrics.items()) if k not in per_class)
        typer.echo(f"done in {result.wall_s:.0f} s, {result.epochs} epochs; best validation: {shown}")
        typer.echo(f"run folder: {result.out_dir}")
