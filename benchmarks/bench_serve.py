"""Serving speed behind BENCHMARKS.md: ``popevit predict`` end to end, PyTorch against onnxruntime.

For ``vit_cpu`` + PoPE, ``vit_cpu`` + RoPE-axial and ResNet18 at 128 px (random weights: speed does not depend on
them), each as a run folder with its OOD flag fitted and as its exported ONNX file:

1. one image, end to end (read + decode + preprocess + model + OOD scores + softmax), the way a single
   ``popevit predict RUN image.png`` call works once the model is loaded: p50 and p95 over ``--repeats`` different
   images, after warm-up;
2. a folder of ``--images`` phantoms (PNG, 256 px, 4 classes): images per second for the whole folder.

Each in wall time and in the process's CPU time. With ``--threads 1`` the CPU time is what the wall time would be on
an idle core, so it stays meaningful when other jobs load the machine (the wall time then measures the scheduler).

Usage: ``python benchmarks/bench_serve.py [--threads 1] [--images 1000] [--json out.json] [--md out.md]``. Phantoms,
runs and exports live in a temporary folder (``--work`` keeps them). Timings on shared machines vary; the load
average is reported alongside.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

MODELS = [("vit_cpu", "pope"), ("vit_cpu", "rope_axial"), ("resnet18", None)]
CLASSES = ["glioma", "meningioma", "notumor", "pituitary"]


def make_runs(work: Path, images: int, size: int) -> tuple[Path, dict[str, Path]]:
    """Phantoms, a split, and one run folder per model (random weights, OOD flag fitted, ONNX exported)."""
    import shutil

    import torch

    from popevit.artifact import ModelMeta, save_artifact
    from popevit.config import PreprocessConfig
    from popevit.data import make_split
    from popevit.data.phantoms import synthesize
    from popevit.models import create_model
    from popevit.serve.export import export_run

    data = work / "phantoms"
    if not data.is_dir():
        synthesize(data, per_class=images // 4, size=256, seed=0)
    manifest = work / "manifest.csv"
    if not manifest.is_file():
        make_split(data, manifest, seed=0)
    runs = {}
    for name, pe in MODELS:
        run = work / f"{name}-{pe or 'cnn'}"
        if not (run / "model.onnx").is_file():
            torch.manual_seed(0)
            kwargs = {"num_classes": 4, "in_chans": 1, "img_size": size, **({"pos_enc": pe} if pe else {})}
            meta = ModelMeta(name, kwargs, CLASSES, PreprocessConfig(img_size=size))
            save_artifact(create_model(name, **kwargs), meta, run)
            shutil.copy(manifest, run / "manifest.csv")
            export_run(run, "onnx", overwrite=True, echo=print)
        runs[run.name] = run
    return data, runs


def _p50_p95(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), statistics.quantiles(values, n=20)[18]


def one_image(predictor, files: list[Path], repeats: int) -> dict[str, float]:
    """p50/p95 ms of ``predictor.run([file])`` over ``repeats`` files (after 5 warm-up calls), in wall time and in
    this process's CPU time (with one thread, the wall time of an idle machine; robust to other jobs' load)."""
    for f in files[:5]:
        predictor.run([f], batch_size=1)
    wall, cpu = [], []
    for f in files[5 : 5 + repeats]:
        t, c = time.perf_counter(), time.process_time()
        predictor.run([f], batch_size=1)
        wall.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    (w50, w95), (c50, c95) = _p50_p95(wall), _p50_p95(cpu)
    return {"p50_ms": w50, "p95_ms": w95, "cpu_p50_ms": c50, "cpu_p95_ms": c95, "n": len(wall)}


def folder(predictor, data: Path, batch_size: int) -> dict[str, float]:
    t, c = time.perf_counter(), time.process_time()
    result = predictor.run([data], batch_size=batch_size)
    dt, dc = time.perf_counter() - t, time.process_time() - c
    n = len(result.records)
    return {"images": n, "seconds": dt, "img_per_s": n / dt, "cpu_seconds": dc, "img_per_cpu_s": n / dc}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch and onnxruntime intra-op threads")
    ap.add_argument("--images", type=int, default=1000, help="phantoms in the folder (a multiple of 4)")
    ap.add_argument("--size", type=int, default=128, help="model input size")
    ap.add_argument("--repeats", type=int, default=100, help="single-image calls for the latency percentiles")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--work", type=Path, default=None, help="keep phantoms, runs and exports here")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch

    from popevit.serve.predict import Predictor

    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="popevit-bench-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("POPEVIT_CACHE", str(work / "cache"))
    data, runs = make_runs(work, args.images, args.size)
    files = sorted(p for p in data.rglob("*.png") if "masks" not in p.parts)
    rows = []
    for name, run in runs.items():
        for backend, ref in (("torch", run), ("onnxruntime", run / "model.onnx")):
            predictor = Predictor(ref, device="cpu", threads=args.threads)
            lat = one_image(predictor, files, args.repeats)
            thr = folder(predictor, data, args.batch_size)
            row = {"model": name, "backend": backend, **{f"one_{k}": v for k, v in lat.items()},
                   **{f"folder_{k}": v for k, v in thr.items()}}  # fmt: skip
            print(json.dumps(row))
            rows.append(row)
    report = {
        "threads": args.threads,
        "size": args.size,
        "images": args.images,
        "batch_size": args.batch_size,
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "torch": torch.__version__,
        "rows": rows,
    }
    lines = [
        "| model | backend | one image p50 / p95 ms (CPU) | folder img / CPU s | one image p50 / p95 ms (wall) | "
        "folder img/s (wall) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['backend']} | {r['one_cpu_p50_ms']:.1f} / {r['one_cpu_p95_ms']:.1f} | "
                     f"{r['folder_img_per_cpu_s']:.0f} | {r['one_p50_ms']:.1f} / {r['one_p95_ms']:.1f} | "
                     f"{r['folder_img_per_s']:.1f} |")  # fmt: skip
    md = "\n".join(lines)
    print(md)
    print(f"load average {report['load_average']}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    if args.md:
        args.md.write_text(md + "\n")


if __name__ == "__main__":
    main()
