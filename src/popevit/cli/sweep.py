"""``popevit sweep``: an Optuna study over config keys; each trial is a normal run folder.

Commands import what they run inside their functions (torch, Lightning, timm and popevit's modules built on them): a
heavy import each, kept out of ``popevit --help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from popevit.cli.errors import user_errors

STORAGE_HELP = (
    "Optuna RDB storage URL. Default sqlite:///OUT/sweep.db (one machine; several processes may share it). "
    "For several machines on one study, point every worker at one PostgreSQL database, e.g. "
    "postgresql://USER:PASSWORD@HOST:5432/DB (needs the psycopg and psycopg-binary packages), and give all of "
    "them the same --config, --grid/--range, --seeds and --study-name: each worker takes the next untrained trial; "
    "killed trials are retried by the others after about 2 minutes."
)


def sweep(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="experiment YAML (see configs/)")] = None,
    grid: Annotated[
        list[str] | None, typer.Option("--grid", help='grid over a config key, e.g. --grid "optim.lr=1e-4,3e-4,1e-3"')
    ] = None,
    range_: Annotated[
        list[str] | None,
        typer.Option("--range", help='TPE range, low:high[:log][:int], e.g. --range "optim.lr=1e-5:1e-2:log"'),
    ] = None,
    seeds: Annotated[
        str | None, typer.Option(help="training seeds, one trial each, e.g. 0,1,2 (default train.seed)")
    ] = None,
    n_trials: Annotated[int | None, typer.Option(help="configurations TPE proposes (with --range)")] = None,
    storage: Annotated[str | None, typer.Option(help=STORAGE_HELP)] = None,
    study_name: Annotated[
        str | None, typer.Option(help="study name (default: config name + search-space hash)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="sweep folder (default runs/sweeps/<config name>)")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override for every trial, e.g. --set train.max_epochs=10")
    ] = None,
    data: Annotated[
        Path | None, typer.Option(help="image folder; split once by duplicate group for all trials")
    ] = None,
    manifest: Annotated[Path | None, typer.Option(help="manifest CSV from `popevit data split`")] = None,
    dataset: Annotated[
        str | None, typer.Option(help="folder (default), cifar10 or cifar100 (torchvision; --data is its root)")
    ] = None,
    sampler_seed: Annotated[
        int, typer.Option(help="TPE sampler RNG seed; give each TPE worker its own (grid sweeps ignore it)")
    ] = 0,
) -> None:
    """Sweep hyper-parameters with Optuna: GridSampler for --grid, TPE for --range; objective val macro AUROC.

    Each (configuration, seed) is one trial and one run folder in OUT. Re-running the same command skips finished
    trials and retries failed or killed ones. OUT gets summary.csv/summary.md (mean ± sd over seeds per
    configuration), trials.csv, param_importances.png and parallel_coordinate.png.
    """
    from popevit.cli.train import source_overrides
    from popevit.config import ConfigError, load_config
    from popevit.data.location import data_overrides
    from popevit.sweep import SearchSpace, SweepSpec, run_sweep
    from popevit.training import RunDirError

    overrides = source_overrides(set_, data, manifest)
    if dataset is not None:
        overrides.append(f"data.dataset={dataset}")
    with user_errors(ConfigError, RunDirError, RuntimeError):
        base = load_config(config, overrides)
        seed_list = [int(s) for s in seeds.split(",")] if seeds else [base.train.seed]
        space = SearchSpace.from_specs(list(grid or []), list(range_ or []), seed_list)
        if not {"data.data", "data.manifest"} & set(space.params):  # else every trial names its data
            overrides += data_overrides(base)  # --data, --manifest, else $POPEVIT_DATA
        spec = SweepSpec(
            config,
            overrides,
            space,
            out or Path("runs") / "sweeps" / base.name,
            storage,
            study_name,
            n_trials,
            sampler_seed,
        )
        result = run_sweep(spec)
    typer.echo(
        f"study {result.study_name!r} ({result.storage}): {result.complete}/{result.expected} trials complete; "
        f"this run trained {result.trained}, reused {result.reused}, failed {result.failed}"
    )
    for note in result.notes:
        typer.echo(f"note: {note}")
    if "summary.md" in result.summary:
        typer.echo(f"summary: {result.summary['summary.md']}")
    if result.failed:
        raise typer.Exit(1)
