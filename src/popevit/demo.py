"""``popevit demo``: the whole pipeline on built-in synthetic MRI phantoms, in about two minutes on 2 CPU cores.

phantoms -> duplicate-grouped split -> train a small PoPE-ViT and RoPE-ViT -> evaluate both on the held-out
test split with bootstrap CIs -> paired comparison -> comparison table.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from popevit.config import load_config

DEMO_PES = ("pope", "rope_axial")


@dataclass
class DemoRow:
    pos_enc: str
    run_dir: Path
    accuracy: tuple[float, float, float]
    auroc_macro: tuple[float, float, float]
    train_s: float


def demo_config(data: Path, pos_enc: str, epochs: int, seed: int):
    """The demo's experiment: ``vit_demo`` (conv stem, 64 px) on phantoms, otherwise the seed recipe."""
    return load_config(
        None,
        [
            f"name=demo_{pos_enc}",
            f"data.data={data}",
            "data.preprocess.img_size=64",
            "data.batch_size=32",
            "data.augment.rotation=10",
            "model.name=vit_demo",
            f"model.pos_enc={pos_enc}",
            "optim.lr=2e-3",
            "optim.weight_decay=0.05",
            "optim.warmup_epochs=1",
            f"train.max_epochs={epochs}",
            "train.patience=null",
            f"train.seed={seed}",
            "train.progress_bar=false",
        ],
    )


def _ci(result: dict, key: str) -> tuple[float, float, float]:
    m = result["metrics"][key]
    return float(m["value"]), float(m["lo"]), float(m["hi"])


def run_demo(out: Path, per_class: int = 500, epochs: int = 8, seed: int = 0, echo=print) -> list[DemoRow]:
    """Run the demo into ``out`` and return one row per positional encoding.

    Args:
        out: output folder (phantoms in ``out/data``, runs in ``out/runs/<pe>``, comparison in ``out/compare``).
        per_class: phantom images per class.
        epochs: training epochs per model.
        seed: seed for phantoms, split and training.
        echo: where progress lines go.

    Returns:
        One :class:`DemoRow` per model, in ``DEMO_PES`` order.
    """
    import lightning.pytorch  # noqa: F401  (importing it sets its loggers to INFO; lower them afterwards)

    from popevit.data.phantoms import synthesize
    from popevit.evaluation.evaluate import evaluate_run
    from popevit.training import train

    # Lightning's banners and tips would bury the demo's own progress lines.
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    out = Path(out)
    data = out / "data"
    if not (data / "metadata.csv").exists():
        echo(f"[demo] writing {4 * per_class} synthetic MRI phantoms to {data}")
        synthesize(data, per_class=per_class, size=64, seed=seed)
    rows = []
    for pe in DEMO_PES:
        run_dir = out / "runs" / pe
        if (run_dir / "model.json").exists():
            echo(f"[demo] {run_dir} already trained; reusing it")
            train_s = json.loads((run_dir / "run.json").read_text())["wall_s"]
        else:
            echo(f"[demo] training vit_demo with pos_enc={pe} for {epochs} epochs ...")
            t0 = time.perf_counter()
            train(demo_config(data, pe, epochs, seed), run_dir)
            train_s = time.perf_counter() - t0
        metrics = evaluate_run(run_dir, out=run_dir / "eval", n_boot=1000, seed=seed)
        rows.append(DemoRow(pe, run_dir, _ci(metrics, "accuracy"), _ci(metrics, "auroc_macro"), train_s))
    return rows


def format_table(rows: list[DemoRow]) -> str:
    lines = [
        "| model | accuracy [95% CI] | macro AUROC [95% CI] | train s |",
        "| --- | --- | --- | --- |",
    ]
    for r in rows:
        a, u = r.accuracy, r.auroc_macro
        lines.append(
            f"| vit_demo + {r.pos_enc} | {a[0]:.3f} [{a[1]:.3f}, {a[2]:.3f}] | {u[0]:.3f} [{u[1]:.3f}, {u[2]:.3f}] "
            f"| {r.train_s:.0f} |"
        )
    return "\n".join(lines)
