"""Training-step speed of every positional encoding at the 224-px configuration, side by side with timm.

One step = forward + cross-entropy + backward + AdamW update, batch 32, 224 px grayscale, ``vit_p16_w512_d6`` (width
512, 6 blocks, 8 heads, MLP 1024, mean pooling). The reference is timm's ``VisionTransformer`` with identical dimensions
and no position embedding (``class_token=False, global_pool='avg', pos_embed='none'``). Models are interleaved: each
repeat times one step of every model in turn, so load drifts on a shared machine hit all of them alike; the figure is
the median over repeats after warm-up, both in wall time and in process CPU time (with ``--threads 1`` the latter is the
work done, nearly independent of other jobs competing for the cores).

Targets (BENCHMARKS.md): pope / none <= 1.10, rope_* / none <= 1.05, none / timm <= 1.00.

Usage::

    python benchmarks/bench_models.py                      # all PEs, 7 repeats, all cores
    python benchmarks/bench_models.py --pe none pope --repeats 5 --threads 1 --json out.json
    python benchmarks/bench_models.py --pope-scale all     # the softmax-scale study (docs/experiments/)

``--pope-scale`` compares PoPE's two candidate softmax scales, ``1/sqrt(D)`` ("head_dim", the default) and
``1/sqrt(2D)`` ("cartesian"): (1) attention statistics at initialisation of ``vit_p16_w512_d6`` on 224 px phantoms
(std of the logits over keys, softmax entropy / log N, mean attention distance in patches), next to ``none`` and
``rope_axial``; (2) a short training run on a task that needs content and position (filled or hollow square, left
or right half; 32 px, patch 4, width 64, 2 blocks, 2 heads of D = 32, AdamW, 200 steps, 3 seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from popevit.models import create_model, list_pos_encs

TIMM = "timm_vit"


def build(name: str, img_size: int, num_classes: int) -> torch.nn.Module:
    if name == TIMM:
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(
            img_size=img_size,
            patch_size=16,
            in_chans=1,
            num_classes=num_classes,
            embed_dim=512,
            depth=6,
            num_heads=8,
            mlp_ratio=2.0,
            class_token=False,
            global_pool="avg",
            pos_embed="none",
        )
    return create_model("vit_p16_w512_d6", num_classes=num_classes, img_size=img_size, pos_enc=name)


def step_fn(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def _phantoms(n_per_class: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np

    from popevit.data.phantoms import CLASSES, render

    xs, ys = [], []
    for ci, label in enumerate(CLASSES):
        for i in range(n_per_class):
            img, _, _ = render(label, np.random.default_rng((seed, ci, i)), size)
            xs.append(torch.from_numpy(img))
            ys.append(ci)
    x = torch.stack(xs)[:, None]  # (B, 1, H, W)
    return (x - x.mean()) / x.std(), torch.tensor(ys)


def _set_scale(model: torch.nn.Module, scale: str) -> torch.nn.Module:
    model.pos_enc.scale = scale
    return model


def pope_scale_study(parts: str) -> None:
    from popevit.models import ViT, ViTConfig, capture_attention
    from popevit.models.pos_enc import patch_positions

    torch.manual_seed(0)
    if parts == "train":
        return _pope_scale_training(ViT, ViTConfig)
    x, _ = _phantoms(2, 224, seed=123)  # 8 images
    print("# (1) attention at init, vit_p16_w512_d6, 224 px phantoms, blocks 1 and 6")
    print(f"{'variant':<22} {'blk':>3} {'logit std':>9} {'H/logN':>7} {'dist':>6}")
    variants = [("none", None), ("rope_axial", None), ("pope", "head_dim"), ("pope", "cartesian")]
    for pe, scale in variants:
        torch.manual_seed(0)
        model = create_model("vit_p16_w512_d6", num_classes=4, img_size=224, pos_enc=pe).eval()
        if scale:
            _set_scale(model, scale)
        with torch.no_grad(), capture_attention(model) as rec:
            model(x)
        pos = patch_positions(rec.grid)
        dist = torch.cdist(pos, pos)  # (P, P) patch distances
        for b in (0, len(rec.attn) - 1):
            p = rec.attn[b]  # (B, H, N, N), no prefix tokens in vit_p16_w512_d6
            logp = p.clamp_min(1e-30).log()
            std = logp.std(dim=-1).mean().item()  # = std of logits over keys
            ent = (-(p * logp).sum(-1)).mean().item() / math.log(p.shape[-1])
            d = (p * dist).sum(-1).mean().item()
            print(f"{pe + (':' + scale if scale else ''):<22} {b + 1:>3} {std:9.3f} {ent:7.3f} {d:6.2f}")

    _pope_scale_training(ViT, ViTConfig)


def _pope_scale_training(ViT, ViTConfig) -> None:
    print("# (2) training on a content x position task (filled/hollow square x left/right half), 32 px, patch 4")
    xtr, ytr = _shapes_task(1024, seed=0)
    xva, yva = _shapes_task(512, seed=1)
    cfg = ViTConfig(img_size=32, patch_size=4, embed_dim=64, depth=2, num_heads=2, mlp_dim=128, pool="mean")
    results: dict[str, list[tuple[float, float, float]]] = {}
    for seed in range(3):
        for scale in ("head_dim", "cartesian"):
            torch.manual_seed(seed)
            model = _set_scale(ViT(cfg.replace(pos_enc="pope")), scale)
            opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
            g = torch.Generator().manual_seed(seed)
            losses = []
            for _ in range(200):
                idx = torch.randint(0, len(xtr), (32,), generator=g)
                loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                losses.append(loss.item())
            model.eval()
            with torch.no_grad():
                out = model(xva)
            acc = (out.argmax(1) == yva).float().mean().item()
            r = (statistics.mean(losses[-50:]), acc, F.cross_entropy(out, yva).item())
            results.setdefault(scale, []).append(r)
            print(
                f"pope:{scale:<10} seed {seed}: train loss (last 50) {r[0]:.3f}  val acc {r[1]:.3f}  "
                f"val loss {r[2]:.3f}"
            )
    for scale, r in results.items():
        m = [statistics.mean(v[i] for v in r) for i in range(3)]
        print(f"pope:{scale:<10} mean: train loss {m[0]:.3f}  val acc {m[1]:.3f}  val loss {m[2]:.3f}")


def _shapes_task(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images with one 8 px square, filled or hollow (content), in the left or right half (position)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 * torch.randn(n, 1, 32, 32, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    for i in range(n):
        hollow, right = int(y[i]) // 2, int(y[i]) % 2
        r = int(torch.randint(0, 25, (1,), generator=g))
        c = int(torch.randint(0, 9, (1,), generator=g)) + 16 * right
        x[i, 0, r : r + 8, c : c + 8] += 1.0
        if hollow:
            x[i, 0, r + 2 : r + 6, c + 2 : c + 6] -= 1.0
    return x, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pe", nargs="+", default=list_pos_encs(), help="positional encodings to time")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-timm", action="store_true", help="skip the timm reference")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument(
        "--pope-scale", choices=["all", "train"], default=None, help="run the PoPE softmax-scale study instead"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.pope_scale:
        pope_scale_study(args.pope_scale)
        return
    torch.manual_seed(0)
    names = list(dict.fromkeys(["none", *args.pe])) + ([] if args.no_timm else [TIMM])
    x = torch.randn(args.batch, 1, args.img_size, args.img_size)
    y = torch.randint(0, 4, (args.batch,))
    steps = {n: step_fn(build(n, args.img_size, 4).train(), x, y) for n in names}
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(args.warmup + args.repeats):
        for n in names:
            t0, c0 = time.perf_counter(), time.process_time()
            steps[n]()
            if r >= args.warmup:
                times[n].append(time.perf_counter() - t0)
                cpu[n].append(time.process_time() - c0)
        print(f"repeat {r + 1}/{args.warmup + args.repeats} done", flush=True)
    med = {n: statistics.median(t) for n, t in times.items()}
    med_cpu = {n: statistics.median(t) for n, t in cpu.items()}
    print(
        f"# train step, vit_p16_w512_d6, batch {args.batch}, {args.img_size}px, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, median of {args.repeats}"
    )
    print("wall = elapsed time; cpu = process CPU time, robust to other jobs on a shared machine with --threads 1")
    print(f"{'model':<12} {'wall ms':>9} {'/ none':>7} {'/ timm':>7} {'cpu ms':>9} {'/ none':>7} {'/ timm':>7}")
    for n in names:
        row = f"{n:<12}"
        for m in (med, med_cpu):
            ratio_t = f"{m[n] / m[TIMM]:7.3f}" if TIMM in m else "      -"
            row += f" {m[n] * 1e3:9.1f} {m[n] / m['none']:7.3f} {ratio_t}"
        print(row)
    if args.json:
        with open(args.json, "w") as f:
            out = {"args": vars(args), "threads": torch.get_num_threads(), "wall_s": times, "cpu_s": cpu}
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
