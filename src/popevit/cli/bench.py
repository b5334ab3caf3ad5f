"""``popevit bench``: training/inference speed per positional encoding against timm and the machine's peak.

Commands import what they run inside their functions (torch, Lightning, timm and popevit's modules built on them): a
heavy import each, kept out of ``popevit --help``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from popevit.cli.errors import user_errors


def bench(
    json_out: Annotated[Path | None, typer.Option("--json", help="write every figure to this JSON file")] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda (cuda: bf16 autocast, SDPA backend probe)")] = "cpu",
    quick: Annotated[bool, typer.Option(help="seconds-long smoke run: vit_p8_w32_d2 at 32 px over phantoms")] = False,
    pe: Annotated[list[str] | None, typer.Option("--pe", help="positional encoding (repeatable; default all)")] = None,
    sizes: Annotated[str, typer.Option(help="comma list of benchmark sizes: tiny, cpu, seed")] = "cpu,seed",
    sections: Annotated[str | None, typer.Option(help="comma list of sections (default all)")] = None,
    repeats: Annotated[int, typer.Option(help="interleaved timed rounds; the figure is their median")] = 5,
    warmup: Annotated[int, typer.Option(help="discarded leading rounds")] = 1,
    batch: Annotated[int | None, typer.Option(help="training batch (default 32)")] = None,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: all cores)")] = None,
    bf16: Annotated[bool | None, typer.Option("--bf16/--fp32", help="autocast (default: bf16 on cuda only)")] = None,
    data: Annotated[Path | None, typer.Option(help="image folder for the loader figure")] = None,
    loader_workers: Annotated[int, typer.Option(help="DataLoader workers of the cached-loader figure")] = 0,
    manifest: Annotated[Path | None, typer.Option(help="manifest for the epoch figure")] = None,
    epoch_steps: Annotated[int | None, typer.Option(help="time N batches of the epoch and extrapolate")] = None,
    markdown: Annotated[Path | None, typer.Option("--md", help="also write the Markdown tables here")] = None,
) -> None:
    """Benchmark every positional encoding: step time, ratios to `none` and timm, GFLOP/s, latency, memory, loader."""
    from popevit.bench import SECTIONS, BenchConfig, quick_config, run_bench, to_markdown
    from popevit.io import atomic_write_json, atomic_write_text

    chosen = sections.split(",") if sections else list(SECTIONS)
    options = dict(
        device=device,
        sections=chosen,
        repeats=repeats,
        warmup=warmup,
        batch=batch,
        threads=threads,
        bf16=bf16,
        data=data,
        loader_workers=loader_workers,
        epoch_manifest=manifest,
    )
    if pe:
        options["pes"] = list(pe)
    with user_errors(RuntimeError):
        if quick:
            cfg = quick_config(**options)
        else:
            cfg = BenchConfig(
                sizes=[s.strip() for s in sizes.split(",") if s.strip()], epoch_max_steps=epoch_steps, **options
            )
    res = run_bench(cfg, log=lambda s: typer.echo(f"[bench] {s}", err=True))
    text = to_markdown(res)
    typer.echo(text)
    if json_out is not None:
        atomic_write_json(json_out, res, indent=1)
        typer.echo(f"wrote {json_out}", err=True)
    if markdown is not None:
        atomic_write_text(markdown, text)
