"""Markdown tables of a ``run_bench`` result (the text of BENCHMARKS.md and of ``popevit bench``'s summary)."""

from __future__ import annotations

from typing import Any


def _f(v: float | None, fmt: str = ".1f") -> str:
    return "-" if v is None else format(v, fmt)


def _load(v: list[float] | None) -> str:
    return "-" if not v else "/".join(f"{x:.1f}" for x in v)


def to_markdown(res: dict[str, Any]) -> str:
    """Every figure of a bench result as Markdown sections and tables."""
    m = res["machine"]
    lines = [
        f"Machine: {m['device_name']}, {m['cpus']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), "
        f"timm {m['timm']}, device `{m['device']}`. Load average (1/5/15 min) at start {_load(res['load_avg_start'])}, "
        f"at end {_load(res.get('load_avg_end'))}.",
        "",
    ]
    if "peak" in res:
        p = res["peak"]
        sizes = ", ".join(f"{n}: {g:.1f}" for n, g in p["by_size"].items())
        lines += [
            f"Matmul peak ({p['dtype']}, {p['threads']} threads): **{p['peak_gflops']:.1f} GFLOP/s** "
            f"(by side n: {sizes}; load {_load(p['load_avg'])}).",
            "",
        ]
    for size_name, t in res.get("train", {}).items():
        lines += [
            f"### Training step, {size_name}: {t['preset']}, {t['img_size']} px ({t['tokens']} tokens), batch "
            f"{t['batch']}, {'bf16' if t['bf16'] else 'fp32'}, {t['threads']} threads",
            "",
            f"Median of {t['repeats']} interleaved rounds after {t['warmup']} warm-up; ratios are medians of per-round "
            f"ratios. Load {_load(t['load_avg_before'])} before, {_load(t['load_avg_after'])} after. *of peak: "
            + (
                f"median per-round ratio to a {t['matmul_reference']['gflop']:.1f}-GFLOP matmul timed in the same "
                f"rounds ({t['matmul_reference']['gflops']:.1f} GFLOP/s median under this load)."
                if "matmul_reference" in t
                else "GFLOP/s at the median step over the matmul peak."
            ),
            "",
            "| model | step ms | min ms | spread | img/s | / none | / timm | GFLOP/step | GFLOP/s | of peak* |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for n, r in t["models"].items():
            share = r.get("share_of_peak_interleaved", r.get("share_of_peak"))
            lines.append(
                f"| {n} | {r['step_ms']:.1f} | {r['min_ms']:.1f} | {r['iqr_rel']:.0%} | {r['img_s']:.1f} | "
                f"{r['ratio_none']:.3f} | {_f(r.get('ratio_timm'), '.3f')} | {r['gflop_per_step']:.2f} | "
                f"{r['gflops']:.1f} | {'-' if share is None else f'{share:.0%}'} |"
            )
        lines.append("")
    for size_name, t in res.get("inference", {}).items():
        lines += [
            f"### Inference, {size_name}: {t['img_size']} px, {'bf16' if t['bf16'] else 'fp32'}",
            "",
            f"Latency: one image, {t['latency_repeats']} interleaved calls; throughput: batch {t['batch']}. "
            f"Load {_load(t['load_avg_before'])} before, {_load(t['load_avg_after'])} after.",
            "",
            "| model | latency p50 ms | latency p95 ms | img/s at batch | / none |",
            "|---|---:|---:|---:|---:|",
        ]
        for n, r in t["models"].items():
            lines.append(
                f"| {n} | {r['latency_ms_p50']:.2f} | {r['latency_ms_p95']:.2f} | "
                f"{r['throughput_img_s']:.1f} | {r['ratio_none_batch']:.3f} |"
            )
        lines.append("")
    for size_name, t in res.get("memory", {}).items():
        method = next(iter(t["models"].values()))["method"]
        lines += [
            f"### Peak memory of two training steps, {size_name}: batch {t['batch']}, {t['img_size']} px "
            f"({method}; load {_load(t['load_avg'])})",
            "",
            "| model | params MB | peak added MB | peak total MB |",
            "|---|---:|---:|---:|",
        ]
        for n, r in t["models"].items():
            lines.append(f"| {n} | {r['params_mb']:.1f} | {r['peak_delta_mb']:.1f} | {r['peak_total_mb']:.1f} |")
        lines.append("")
    if "loader" in res:
        d = res["loader"]
        lines += [
            f"### Data loader: {d['images']} images of {d['data']}, {d['img_size']} px, batch {d['batch_size']}, "
            f"{d['workers']} workers",
            "",
            f"cold (decode + preprocess + cache write) **{d['cold_img_s']:.0f} img/s**; warm disk cache "
            f"{d['warm_disk_img_s']:.0f} img/s; cached in memory with augmentation **{d['cached_img_s']:.0f} img/s** "
            f"(epochs: {', '.join(f'{r:.0f}' for r in d['cached_epochs_img_s'])}). Load "
            f"{_load(d['load_avg_before'])} before, {_load(d['load_avg_after'])} after.",
            "",
        ]
    if "epoch" in res:
        e = res["epoch"]
        how = f"extrapolated from {e['steps_timed']} timed batches" if e["extrapolated"] else "whole epoch timed"
        lines += [
            f"### Training epoch: {e['model']} + {e['pos_enc']}, {e['img_size']} px, batch {e['batch_size']}, "
            f"{e['images']} training images ({e['batches_per_epoch']} batches), {e['threads']} threads",
            "",
            f"**{e['epoch_s']:.1f} s** per epoch ({how}; {e['step_s'] * 1e3:.0f} ms per batch including loading, "
            f"{e['img_s']:.1f} img/s); datamodule setup {e['setup_s']:.1f} s. Load {_load(e['load_avg_before'])} "
            f"before, {_load(e['load_avg_after'])} after.",
            "",
        ]
    if "attention" in res:
        a = res["attention"]
        sb = a["sdpa_backends"]
        lines += [
            f"### SDPA backends ({a['size']} size, {sb['dtype']}; torch priority {', '.join(sb['priority'])})",
            "",
            "| PE | q | v | bias | accepted (fwd+bwd) | selected | ms per backend |",
            "|---|---|---|---|---|---|---|",
        ]
        for pe, r in sb["by_pe"].items():
            ms = ", ".join(f"{b}: {t:.2f}" for b, t in r["ms"].items())
            lines.append(
                f"| {pe} | {r['q']} | {r['v']} | {r['bias']} | {', '.join(r['accepted'])} | {r['selected']} | {ms} |"
            )
        pl = a["pope_layouts"]
        lines += [
            "",
            f"PoPE attention core, forward + backward, q {pl['q']}, v {pl['v']}, {pl['dtype']}:",
            "",
            "| layout | ms | / unequal | max abs diff vs fp32 explicit |",
            "|---|---:|---:|---:|",
        ]
        for n, t in pl["ms"].items():
            diff = pl["max_abs_diff"].get(n)
            lines.append(f"| {n} | {t:.2f} | {pl['ratio_to_unequal'][n]:.3f} | {_f(diff, '.2e')} |")
        lines.append("")
    if "targets" in res:
        lines += ["### Targets", "", "| target | goal | value | met |", "|---|---|---:|---|"]
        for t in res["targets"]:
            met = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
            v = t["value"]
            val = "-" if v is None else (f"{v:.0%}" if "peak" in t["name"] else f"{v:.3f}" if v < 10 else f"{v:.0f}")
            lines.append(f"| {t['name']} | {t['target']} | {val} | {met} |")
        lines.append("")
    for size_name, models in res.get("profile", {}).items():
        for n, p in models.items():
            lines += [
                f"### Profile of one training step: {n} at {size_name} ({p['total_ms']:.0f} ms self time)",
                "",
                "| op | ms | share | calls |",
                "|---|---:|---:|---:|",
            ]
            for op in p["ops"]:
                lines.append(
                    f"| `{op['name']}` | {op['ms_per_step']:.1f} | {op['share']:.0%} | {op['calls_per_step']:.0f} |"
                )
            lines.append("")
    return "\n".join(lines)
