"""Training-step cost of the equal-budget recipes, side by side: what a 30-minute budget buys each model in images.

Each candidate is a config file plus optional ``--set``-style overrides, built exactly as ``popevit train`` builds it
(``load_config`` + ``model_kwargs`` + ``create_model``), in training mode, so dropout and drop path run. One step =
forward + cross-entropy + backward + AdamW update on a fixed batch of the config's size and resolution. Steps are
interleaved (one of every candidate per round, order rotated) so that load drifts hit all of them alike; the figure is
the median over rounds, reported as images/s and as the ratio to the first candidate (the baseline). Data loading,
validation and EMA updates are left out: they are the same for every candidate or small, and the real runs'
``run.json`` images/s include them.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_recipes.py --json recipes.json
    .venv/bin/python benchmarks/bench_recipes.py \
        --candidate "wide=configs/experiments/whole_budget_vit_resstem_noreg.yaml;model.embed_dim=256"

A candidate trains in the memory layout its config gives it (``train.channels_last``); ``memory_format=contiguous`` or
``memory_format=channels_last`` among its overrides forces one, and an empty config path means the defaults plus the
overrides::

    .venv/bin/python benchmarks/bench_recipes.py --threads 1 \
        --candidate "resnet18=configs/experiments/whole_budget_resnet18.yaml;memory_format=contiguous" \
        --candidate "resnet18_cl=configs/experiments/whole_budget_resnet18.yaml;memory_format=channels_last"
"""

from __future__ import annotations

import argparse
import json
import os
import statistics

import torch

from popevit.bench.models import make_train_step
from popevit.bench.timing import interleaved, load_average, machine_info, summarize
from popevit.config import load_config
from popevit.models import create_model
from popevit.models.factory import parameter_counts
from popevit.training.run import model_kwargs

DEFAULT = [
    "resnet18=configs/experiments/whole_budget_resnet18.yaml",
    "recipe=configs/experiments/whole_budget_vit_resstem.yaml",
    "noreg=configs/experiments/whole_budget_vit_resstem_noreg.yaml",
    "noreg_w256=configs/experiments/whole_budget_vit_resstem_noreg.yaml;model.embed_dim=256",
    "noreg_w320=configs/experiments/whole_budget_vit_resstem_noreg.yaml;model.embed_dim=320",
    "noreg_d8=configs/experiments/whole_budget_vit_resstem_noreg.yaml;model.depth=8",
]


def parse_candidate(text: str) -> tuple[str, str, list[str]]:
    """``"label=path.yaml;key=value;..."`` -> ``(label, path, overrides)``."""
    label, sep, rest = text.partition("=")
    if not sep or not rest:
        raise SystemExit(f"--candidate {text!r}: expected LABEL=CONFIG.yaml[;key=value...]")
    path, *overrides = rest.split(";")
    return label, path, overrides


def memory_format(overrides: list[str]) -> tuple[str | None, list[str]]:
    """The layout ``memory_format=...`` among ``overrides`` forces (None: the config's ``train.channels_last``
    decides), and the config overrides without it."""
    forced = [o.partition("=")[2] for o in overrides if o.startswith("memory_format=")]
    rest = [o for o in overrides if not o.startswith("memory_format=")]
    if forced and forced[-1] not in ("contiguous", "channels_last"):
        raise SystemExit(f"memory_format={forced[-1]!r}: expected contiguous or channels_last")
    return (forced[-1] if forced else None), rest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--candidate", action="append", help="LABEL=CONFIG.yaml[;key=value...]; the first is the baseline")
    ap.add_argument("--repeats", type=int, default=10, help="timed rounds (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="discarded leading rounds")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the configs' train.threads)")
    ap.add_argument("--json", default=None, help="write every figure here")
    args = ap.parse_args()

    cands = [parse_candidate(c) for c in (args.candidate or DEFAULT)]
    torch.manual_seed(0)
    steps, info, threads = {}, {}, set()
    for label, path, overrides in cands:
        layout, overrides = memory_format(overrides)
        cfg = load_config(path or None, overrides)
        layout = layout or ("channels_last" if cfg.train.channels_last else "contiguous")
        kw = model_kwargs(cfg, num_classes=4)
        model = create_model(cfg.model.name, **kw).train()
        model = model.to(memory_format=torch.channels_last if layout == "channels_last" else torch.contiguous_format)
        size, batch = cfg.data.preprocess.img_size, cfg.data.batch_size
        x = torch.randn(batch, cfg.data.preprocess.in_chans, size, size)
        y = torch.arange(batch) % 4
        steps[label] = make_train_step(model, x, y)
        threads.add(cfg.train.threads)
        arch = {k: kw[k] for k in ("stem", "embed_dim", "depth", "dropout", "drop_path") if k in kw}
        info[label] = {"config": path, "overrides": overrides, "memory_format": layout, "batch": batch,
                       "img_size": size, "params": parameter_counts(model)[0], "model": cfg.model.name,
                       **arch}  # fmt: skip
    n_threads = args.threads or (threads.pop() if len(threads) == 1 else os.cpu_count())
    torch.set_num_threads(n_threads)

    load_before = load_average()
    samples = interleaved(steps, repeats=args.repeats, warmup=args.warmup)
    load_after = load_average()
    base = cands[0][0]
    rows = []
    for label, *_ in cands:
        s = summarize(samples[label])
        ratios = [a / b for a, b in zip(samples[label], samples[base], strict=True)]  # per-round ratios
        img_s = info[label]["batch"] / s["median_s"]
        rows.append({"label": label, **info[label], **s, "img_per_s": img_s, "step_ratio": statistics.median(ratios)})

    print(f"{n_threads} threads, {args.repeats} rounds (+{args.warmup} warm-up), load {load_before} -> {load_after}")
    print(f"{'candidate':<14}{'params':>12}{'step ms':>10}{'img/s':>9}{'step / ' + base:>18}{'iqr':>7}")
    for r in rows:
        print(f"{r['label']:<14}{r['params']:>12,}{r['median_s'] * 1e3:>10.0f}{r['img_per_s']:>9.1f}"
              f"{r['step_ratio']:>18.2f}{r['iqr_rel']:>7.2f}")  # fmt: skip
    if args.json:
        out = {"machine": machine_info("cpu").to_dict(), "threads": n_threads, "repeats": args.repeats,
               "warmup": args.warmup, "load_before": load_before, "load_after": load_after, "rows": rows}  # fmt: skip
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
