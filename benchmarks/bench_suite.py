"""Reproduce every figure of BENCHMARKS.md: the ``popevit bench`` suite plus the two plotted sweeps.

Usage::

    python benchmarks/bench_suite.py --json runs/bench/cpu.json --md runs/bench/cpu.md                 # cpu + seed
    python benchmarks/bench_suite.py --sizes cpu --sections train,inference,memory,loader,epoch,profile ...
    python benchmarks/bench_suite.py --sweeps --plots benchmarks/figures --sections none --json sweeps.json
    python benchmarks/bench_suite.py --device cuda --json gpu.json   # bf16, SDPA backends, PoPE layouts

Everything except ``--sweeps``/``--plots`` is ``popevit bench``; see ``popevit.bench`` for what each figure means.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from popevit.bench import SECTIONS, BenchConfig, run_bench, to_markdown
from popevit.bench.sweeps import plot_sweeps, step_time_vs_tokens, throughput_vs_batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sizes", default="cpu,seed")
    ap.add_argument("--pe", nargs="+", default=None, help="positional encodings (default: all)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}, or 'none'")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None, help="training batch (default: the size's own, 32)")
    ap.add_argument("--epoch-max-steps", type=int, default=None, help="time N batches and extrapolate")
    ap.add_argument("--loader-limit", type=int, default=None)
    ap.add_argument("--loader-workers", type=int, default=0, help="DataLoader workers of the cached-loader figure")
    ap.add_argument("--sweeps", action="store_true", help="also run the tokens and batch-size sweeps")
    ap.add_argument("--sweep-pe", nargs="+", default=["none", "pope", "rope_axial", "rel_bias"])
    ap.add_argument("--sweep-repeats", type=int, default=3)
    ap.add_argument("--plots", type=Path, default=None, help="folder for the sweep plots")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--md", type=Path, default=None, help="write the Markdown tables here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = [] if args.sections == "none" else args.sections.split(",")
    res: dict = {}
    if sections:
        cfg = BenchConfig(
            device=args.device,
            sizes=args.sizes.split(","),
            pes=args.pe,
            repeats=args.repeats,
            warmup=args.warmup,
            batch=args.batch,
            threads=args.threads,
            sections=sections,
            epoch_max_steps=args.epoch_max_steps,
            loader_limit=args.loader_limit,
            loader_workers=args.loader_workers,
        )
        res = run_bench(cfg, log=lambda s: print(f"[bench] {s}", flush=True))
        print(to_markdown(res))
    if args.sweeps:
        print("[bench] sweep: step time vs tokens", flush=True)
        res["sweep_tokens"] = step_time_vs_tokens(args.sweep_pe, device=args.device, repeats=args.sweep_repeats)
        print("[bench] sweep: throughput vs batch", flush=True)
        res["sweep_batch"] = throughput_vs_batch(args.sweep_pe, device=args.device, repeats=args.sweep_repeats)
        print(json.dumps({k: res[k] for k in ("sweep_tokens", "sweep_batch")}, indent=1))
        if args.plots:
            for p in plot_sweeps(res["sweep_tokens"], res["sweep_batch"], args.plots):
                print(f"[bench] wrote {p}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=1))
    if args.md and sections:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(to_markdown(res))


if __name__ == "__main__":
    main()
