"""What the report reads from run folders: evaluations (``RUN/eval/<tag>``), run metadata, explanation folders.

Also which metrics the report shows and ranks by (:data:`HEADLINE`, :data:`RANKED`), and the tumour-level view of an
evaluation (:func:`tumour_level`) that the external-validation tables compare.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from popevit.evaluation.compare import run_name
from popevit.evaluation.describe import model_label
from popevit.evaluation.evaluate import EVAL_DIR, METRICS
from popevit.evaluation.predictions import PREDICTIONS
from popevit.io import read_json

HEADLINE = (
    "accuracy",
    "balanced_accuracy",
    "f1_macro",
    "auroc_macro",
    "log_loss",
    "ece",
    "tumor_sensitivity",
    "tumor_specificity",
    "tumor_auroc",
)


PER_CLASS = ("precision", "recall", "f1", "specificity", "auroc")


NAMES = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "f1_macro": "macro F1",
    "auroc_macro": "macro AUROC",
    "log_loss": "log loss",
    "ece": "ECE",
    "tumor_sensitivity": "tumour sensitivity",
    "tumor_specificity": "tumour specificity",
    "tumor_auroc": "tumour AUROC",
}


LOWER_IS_BETTER = {"log_loss", "ece"}


RANKED = ("accuracy", "balanced_accuracy", "auroc_macro", "f1_macro")  # metrics the answer can rank by


FIGURE_ORDER = ("confusion_matrix", "roc", "reliability", "prob_histograms")


EXPLAIN_DIR = "explain"


GALLERIES = ("gallery_confident.png", "gallery_misclassified.png")


@dataclass
class Evaluation:
    """One ``RUN/eval/<tag>`` folder: its ``metrics.json`` and, when present, its ``predictions.csv``."""

    run: Path
    tag: str
    folder: Path
    result: dict[str, Any]

    @property
    def source(self) -> dict[str, Any]:
        return self.result.get("source") or {}

    @property
    def external(self) -> bool:
        return bool(self.source.get("external"))

    @property
    def has_predictions(self) -> bool:
        return (self.folder / PREDICTIONS).is_file()

    def metric(self, name: str) -> dict[str, Any] | None:
        return (self.result.get("metrics") or {}).get(name)


def read_optional_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def load_evaluations(run: Path) -> list[Evaluation]:
    """Every evaluation of ``run`` (folders of ``RUN/eval`` holding a ``metrics.json``), by tag.

    Raises:
        ValueError: a ``metrics.json`` that is not valid JSON (the message names it).
    """
    found = []
    for d in sorted((run / EVAL_DIR).glob("*")):
        if not (d / METRICS).is_file():
            continue
        result = read_json(d / METRICS, "metrics.json of an evaluation")  # damaged: an error naming it, no skip
        if isinstance(result, dict) and "metrics" in result:
            found.append(Evaluation(run, d.name, d, result))
    return found


def primary_tag(evals: dict[Path, list[Evaluation]]) -> str | None:
    """The internal evaluation every run has (``test`` when there is one), preferring ones with predictions."""
    shared: set[str] | None = None
    for ev in evals.values():
        tags = {e.tag for e in ev if not e.external}
        shared = tags if shared is None else shared & tags
    if not shared:
        return None

    def key(tag: str) -> tuple[bool, bool, bool, str]:
        with_preds = all(any(e.tag == tag and e.has_predictions for e in ev) for ev in evals.values())
        return (not with_preds, tag != "test", not tag.startswith("test"), tag)

    return min(shared, key=key)


def run_meta(run: Path) -> dict[str, Any]:
    return read_optional_json(run / "model.json") or {}


def model_of(run: Path) -> str:
    """The run's model in words (``vit_p8_w64_d4_conv + pope (res stem)``), or ``""`` without a ``model.json``."""
    model = run_meta(run).get("model") or {}
    return model_label(model.get("name"), model.get("kwargs")) if model else ""


def named(run: Path) -> str:
    """``pope (vit_p8_w64_d4_conv + pope)``: the run's name with its model when known and not the same words."""
    model = model_of(run)
    return f"{run_name(run)} ({model})" if model and model != run_name(run) else run_name(run)


def tumour_level(ev: Evaluation) -> dict[str, dict[str, Any] | None]:
    """Tumour vs no-tumour sensitivity, specificity and AUROC of an evaluation, whatever its classes.

    With >= 3 classes and ``notumor`` they are the ``tumor_*`` metrics; with two classes (``notumor`` and a tumour
    class, as after a label map onto tumor/notumor) they are that class's recall, ``notumor``'s recall and the AUROC.
    """
    classes = list(ev.result.get("classes") or [])
    if ev.metric("tumor_sensitivity") is not None:
        return {k: ev.metric(f"tumor_{k}") for k in ("sensitivity", "specificity", "auroc")}
    if len(classes) == 2 and "notumor" in classes:
        tumour = next(c for c in classes if c != "notumor")
        return {
            "sensitivity": ev.metric(f"recall/{tumour}"),
            "specificity": ev.metric("recall/notumor"),
            "auroc": ev.metric("auroc_macro"),
        }
    return {"sensitivity": None, "specificity": None, "auroc": None}


def image_root(ev: Evaluation) -> str | None:
    """The folder that holds every evaluated image (from ``predictions.csv``), or None."""
    if not ev.has_predictions:
        return None
    with open(ev.folder / PREDICTIONS, newline="", encoding="utf-8") as f:
        folders = {os.path.dirname(row["path"]) for row in csv.DictReader(f) if row.get("path")}
    try:
        return os.path.commonpath(sorted(folders)) if folders else None
    except ValueError:  # relative and absolute paths mixed
        return None


def explain_dirs(run: Path) -> list[Path]:
    root = run / EXPLAIN_DIR
    if not root.is_dir():
        return []
    return [d for d in sorted(root.iterdir()) if (d / "faithfulness.json").is_file() or (d / GALLERIES[0]).is_file()]
