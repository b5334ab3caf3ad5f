"""``popevit demo``: the whole pipeline on built-in synthetic MRI phantoms, in under three minutes on 2 CPU cores.

phantoms (:mod:`popevit.data.phantoms`, with tumour masks) -> one duplicate-grouped split shared by every model ->
train a small PoPE-ViT and a RoPE-ViT side by side (and a ResNet18 when asked) -> evaluate each on the held-out test
split (bootstrap CIs) -> paired comparison (bootstrap, McNemar, DeLong) -> explanations (attention rollout for the
ViTs, Grad-CAM for the CNN, overlays with the tumour outline, pointing game) -> one self-contained ``report.html``.

The recipe is the competitive one of the real-data study at demo size: the ViTs tokenise with a residual
convolutional stem (``model.stem=res``, :mod:`popevit.models.stem`); with the plain convolutional stem they stay
near chance at the same budget. Their final LayerNorm acts on the pooled feature (``model.fc_norm=true``), so that
a lesion covering a few patches still moves it; they find the lesions after 500-700 optimiser steps and train for
1,250 (25 epochs of 800 images at batch 16). Each model trains in its own process with one torch thread
(:mod:`popevit.training.side_by_side`): for models this small a second thread hardly helps, a second process doubles
the throughput. Everything is seeded and the thread counts are fixed, so a second run on the same machine prints the
same table.

The pipeline's modules (torch, Lightning, timm, the evaluation and explanation code) are a heavy import: each step
imports what it runs, so importing this module (``popevit --help``, :class:`DemoSettings`) stays fast.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from popevit.config import ExperimentConfig, load_config

# Fixed, not "all cores": float reductions, hence the table, depend on the thread count.
THREADS = 2  # evaluation, explanations and the report, one step at a time
TRAIN_THREADS = 1  # per model: the models train side by side (:func:`_train_all`)


@dataclass(frozen=True)
class DemoModel:
    """One model of the demo: its run-folder name and the config overrides that make it."""

    name: str
    overrides: tuple[str, ...]
    explain: str  # explanation method


_DEMO_VIT = ("model.name=vit_p8_w64_d4_conv", "model.stem=res", "model.fc_norm=true")  # the encoding alone varies
DEMO_MODELS: tuple[DemoModel, ...] = (
    DemoModel("pope", (*_DEMO_VIT, "model.pos_enc=pope"), "rollout"),
    DemoModel("rope_axial", (*_DEMO_VIT, "model.pos_enc=rope_axial"), "rollout"),
    DemoModel("resnet18", ("model.name=resnet18", "model.pos_enc=null"), "gradcam"),
)


@dataclass(frozen=True)
class DemoSettings:
    """Size of the demo: the two ViTs train side by side in about 120 s on 2 cores (225 CPU-seconds) and reach
    0.98 (PoPE) and 0.94 (RoPE-axial) test accuracy at these defaults, 0.92 or more under another training seed or
    another rounding (docs/experiments/demo_recipe.md); 20 epochs end at 0.88 for both. ResNet18
    (``models=(..., "resnet18")``) costs about 270 CPU-seconds per 10 epochs, so it is not in the default.

    Attributes:
        per_class: phantom images per class (80/10/10 split).
        img_size: phantom and model input side, pixels.
        epochs: training epochs per model.
        batch_size: training batch size.
        lr: AdamW peak learning rate (one warm-up epoch, cosine decay).
        seed: seed of the phantoms, the split, training and the bootstrap.
        n_boot: bootstrap resamples of every CI and paired test.
        explain_images: images explained per model (mistakes and confident hits first).
        models: which of :data:`DEMO_MODELS` to run, by name.
        overrides: config overrides applied after the demo's own (``scripts/demo_variant.py``), e.g.
            ``("model.stem=conv",)``.
    """

    per_class: int = 250
    img_size: int = 64
    epochs: int = 25
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    n_boot: int = 1000
    explain_images: int = 12
    models: tuple[str, ...] = ("pope", "rope_axial")
    overrides: tuple[str, ...] = ()


@dataclass
class DemoRow:
    """One trained and evaluated model of the demo."""

    name: str
    model: str
    run_dir: Path
    n: int
    accuracy: tuple[float, float, float]
    auroc_macro: tuple[float, float, float]
    train_s: float
    pointing: float | None = None


@dataclass
class DemoResult:
    """What :func:`run_demo` made: one row per model, the paired comparison and the report."""

    rows: list[DemoRow]
    compare: dict[str, Any] | None
    report: Path
    split: Path
    data: Path
    timings: dict[str, tuple[float, float]] = field(default_factory=dict)


def demo_config(manifest: Path, model: DemoModel, s: DemoSettings, cache_dir: Path) -> ExperimentConfig:
    """The demo's experiment for ``model``: same split, preprocessing, augmentation and optimiser for every model."""
    steps_per_epoch = max(1, int(0.8 * 4 * s.per_class) // s.batch_size)
    return load_config(
        None,
        [
            f"name=demo_{model.name}",
            f"data.manifest={json.dumps(str(manifest))}",
            f"data.cache_dir={json.dumps(str(cache_dir))}",
            f"data.preprocess.img_size={s.img_size}",
            f"data.batch_size={s.batch_size}",
            *model.overrides,
            f"optim.lr={s.lr}",
            "optim.weight_decay=0.05",
            "optim.warmup_epochs=1",
            f"train.max_epochs={s.epochs}",
            "train.patience=null",
            f"train.seed={s.seed}",
            f"train.threads={TRAIN_THREADS}",
            f"train.log_every_n_steps={min(10, steps_per_epoch)}",
            "train.progress_bar=true",  # drawn on a terminal only (popevit.progress)
            *s.overrides,
        ],
    )


def _clock() -> tuple[float, float]:
    """(wall, CPU) seconds; CPU counts user + system time of this process and its finished workers."""
    t = os.times()
    return time.perf_counter(), t.user + t.system + t.children_user + t.children_system


def _since(start: tuple[float, float]) -> tuple[float, float]:
    now = _clock()
    return now[0] - start[0], now[1] - start[1]


def _ci(metrics: dict[str, Any], key: str) -> tuple[float, float, float]:
    m = metrics["metrics"][key]
    return float(m["value"]), float(m["lo"]), float(m["hi"])


def run_demo(out: Path, settings: DemoSettings | None = None, echo: Callable[[str], None] = print) -> DemoResult:
    """Run the demo into ``out``; finished steps (phantoms, split, trained runs) are reused on a second call.

    Args:
        out: output folder: ``phantoms/`` (images and tumour masks), ``split.csv``, ``runs/<model>/`` (each with
            ``eval/test`` and ``explain/<method>``), ``compare/`` and ``report.html``.
        settings: size of the demo (default :class:`DemoSettings`).
        echo: where progress lines go.

    Returns:
        :class:`DemoResult`.
    """
    import torch

    from popevit.evaluation.compare import compare_runs
    from popevit.evaluation.report import build_report
    from popevit.progress import quiet_third_party

    s = settings or DemoSettings()
    models = [m for m in DEMO_MODELS if m.name in s.models]
    unknown = sorted(set(s.models) - {m.name for m in DEMO_MODELS})
    if unknown or not models:
        raise ValueError(
            f"unknown demo models {unknown or list(s.models)}; choose from {[m.name for m in DEMO_MODELS]}"
        )
    quiet_third_party()
    logging.getLogger("popevit").setLevel(logging.WARNING)
    torch.set_num_threads(THREADS)
    out = Path(out)
    data, split, cache = out / "phantoms", out / "split.csv", out / "cache"
    timings: dict[str, tuple[float, float]] = {}  # stage -> (wall s, CPU s)
    t0 = _clock()
    _prepare_data(data, split, cache, s, echo)
    timings["data"] = _since(t0)
    configs = {m.name: demo_config(split.resolve(), m, s, cache.resolve()) for m in models}
    train_s = _train_all(out / "runs", configs, s, timings, echo)
    rows = [_evaluate(out / "runs" / m.name, configs[m.name], train_s[m.name], s, cache, timings, echo) for m in models]

    comparison = None
    if len(rows) >= 2:
        echo(f"[demo] 5/6 compare: paired bootstrap, McNemar and DeLong -> {out / 'compare'}")
        t = _clock()
        comparison = compare_runs([[r.run_dir] for r in rows], n_boot=s.n_boot, seed=s.seed, out=out / "compare")
        timings["compare"] = _since(t)

    echo("[demo] 6/6 explain: heatmaps with the tumour outline, pointing game; then the report")
    _explain_rows(rows, models, s, timings)
    t = _clock()
    report = build_report(
        [r.run_dir for r in rows], out / "report.html", title="popevit demo: synthetic MRI phantoms",
        n_boot=s.n_boot, seed=s.seed,
    )  # fmt: skip
    timings["report"] = _since(t)
    return DemoResult(rows, comparison, report, split, data, timings)


def _prepare_data(data: Path, split: Path, cache: Path, s: DemoSettings, echo: Callable[[str], None]) -> None:
    """Make the phantoms under ``data`` and the split file ``split``, unless a previous call made them."""
    from popevit.data import make_split
    from popevit.data.phantoms import synthesize

    if not (data / "metadata.csv").exists():
        echo(f"[demo] 1/6 phantoms: {4 * s.per_class} synthetic MRI slices with tumour masks -> {data}")
        synthesize(data, per_class=s.per_class, size=s.img_size, seed=s.seed)
    if not split.exists():
        echo(f"[demo] 2/6 split: duplicate-grouped, stratified 80/10/10 -> {split}")
        make_split(data, split, seed=s.seed, cache_dir=cache)


def _train_all(
    runs: Path,
    configs: dict[str, ExperimentConfig],
    s: DemoSettings,
    timings: dict[str, tuple[float, float]],
    echo: Callable[[str], None],
) -> dict[str, float]:
    """Train every model of ``configs`` into ``runs/<name>`` (reusing finished runs); returns training seconds.

    The demo's models are small enough that a training step is mostly per-operation overhead: a second torch
    thread makes a step about 1.2x faster, a second process trains a second model in the same time. So the models
    train in parallel processes, one thread each, as many at once as the machine has cores.
    """
    from popevit.training.side_by_side import train_side_by_side

    done = {n: float(json.loads((runs / n / "run.json").read_text())["wall_s"]) for n in configs
            if (runs / n / "model.json").exists()}  # fmt: skip
    for name in done:
        echo(f"[demo] 3/6 train {_label(configs[name])}: reusing {runs / name}")
    todo = [n for n in configs if n not in done]
    if not todo:
        return done
    labels = " and ".join(_label(configs[n]) for n in todo)
    n_img = int(0.8 * 4 * s.per_class)
    echo(f"[demo] 3/6 train {labels}: {s.epochs} epochs on {n_img} images, side by side, one thread each ...")
    t = _clock()
    done.update(train_side_by_side({n: (configs[n], runs / n) for n in todo}))
    timings["train " + " + ".join(todo)] = _since(t)
    return done


def _label(cfg: ExperimentConfig) -> str:
    from popevit.evaluation.describe import model_label

    return model_label(cfg.model.name, cfg.model.model_dump())


def _evaluate(
    run_dir: Path,
    cfg: ExperimentConfig,
    train_s: float,
    s: DemoSettings,
    cache: Path,
    timings: dict[str, tuple[float, float]],
    echo: Callable[[str], None],
) -> DemoRow:
    """Evaluate the trained run ``run_dir`` on the test split (bootstrap CIs) and make its table row."""
    from popevit.evaluation.evaluate import evaluate_run

    t = _clock()
    metrics = evaluate_run(run_dir, n_boot=s.n_boot, seed=s.seed, cache_dir=cache)
    timings[f"evaluate {run_dir.name}"] = _since(t)
    acc, label = _ci(metrics, "accuracy"), _label(cfg)
    echo(f"[demo] 4/6 evaluate {label}: test accuracy {acc[0]:.3f} [{acc[1]:.3f}, {acc[2]:.3f}]")
    return DemoRow(run_dir.name, label, run_dir, metrics["n"], acc, _ci(metrics, "auroc_macro"), train_s)


def _explain_rows(
    rows: list[DemoRow], models: list[DemoModel], s: DemoSettings, timings: dict[str, tuple[float, float]]
) -> None:
    """Explain each model's test images and set its row's pointing-game hit rate (None where not measured)."""
    from popevit.explain import explain_run

    for row, m in zip(rows, models, strict=True):
        t = _clock()
        result = explain_run(
            row.run_dir, method=m.explain, faithfulness=True, max_images=s.explain_images, per_class=2,
            steps=10, seed=s.seed, device="cpu",
        )  # fmt: skip
        mask = (result.faithfulness or {}).get("mask") or {}
        row.pointing = ((mask.get("methods") or {}).get(m.explain) or {}).get("pointing_hit_rate")
        timings[f"explain {m.name}"] = _since(t)


def format_table(result: DemoResult) -> str:
    """The comparison as Markdown tables: one row per model, then the paired differences between models.

    Only seeded quantities appear (no wall times), so a second run on the same machine prints the same text.
    """
    rows = result.rows
    lines = [
        "| model | test accuracy [95% CI] | macro AUROC [95% CI] | pointing game |",
        "| --- | --- | --- | --- |",
    ]
    for r in rows:
        a, u = r.accuracy, r.auroc_macro
        point = "n/a" if r.pointing is None else f"{r.pointing:.2f}"
        lines.append(
            f"| {r.model} | {a[0]:.3f} [{a[1]:.3f}, {a[2]:.3f}] | {u[0]:.3f} [{u[1]:.3f}, {u[2]:.3f}] | {point} |"
        )
    if result.compare is not None:
        lines += ["", "| A | B | accuracy A − B [95% CI] | p | q (BH) |", "| --- | --- | --- | --- | --- |"]
        for c in result.compare["comparisons"]:
            b = c["paired_bootstrap"]["accuracy"]
            lines.append(
                f"| {c['a']} | {c['b']} | {b['diff']:+.3f} [{b['lo']:+.3f}, {b['hi']:+.3f}] | {b['p_value']:.2g} "
                f"| {b['q_value']:.2g} |"
            )
    return "\n".join(lines)
