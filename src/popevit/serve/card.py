"""The model card of a run: ``MODEL_CARD.md`` for people and ``model_card.json`` for tools.

In the spirit of a MONAI bundle's ``metadata.json`` and of Mitchell et al. 2019, "Model Cards for Model Reporting"
(arXiv:1810.03993): what the model is for and not for, what it is, what it was trained on, how its inputs are
prepared, how well it did on every evaluation so far (with 95% CIs, calibration and the data source) and what is
known to be wrong with it. ``popevit train`` writes it at the end of a run, ``popevit evaluate`` refreshes it after
every evaluation and ``popevit export`` embeds the JSON in the exported file.

Sources, all optional except ``model.json``: ``run.json`` and ``config.yaml`` (training), ``manifest.csv`` (data,
splits, duplicate groups), every ``eval/*/metrics.json`` (an evaluation whose ``source.external`` is true is listed
under external validation, with ``source.name``), ``audit.json`` (``popevit data audit --json RUN/audit.json``: its
shortcut probes) and ``ood.json`` (the out-of-distribution flag). Compute and render apart: :func:`build_card`
collects, :func:`popevit.serve.card_markdown.render_markdown` writes.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from popevit.artifact import WEIGHTS, file_sha256, load_meta, param_count
from popevit.data import read_manifest
from popevit.data.manifest import EXCLUDED
from popevit.io import atomic_write_text, write_json
from popevit.models import MODELS, list_models
from popevit.serve.card_markdown import CARD_JSON, CARD_MD, render_markdown

FORMAT = "popevit-model-card/1"
OOD_KEYS = ("thresholds", "recall_target", "val_recall", "scores", "fitted_on")
HEADLINE = ("accuracy", "balanced_accuracy", "auroc_macro", "ece", "tumor_sensitivity", "tumor_specificity")

INTENDED_USE = (
    "Research on brain-tumour MRI classification (glioma, meningioma, pituitary tumour, no tumour) from single 2-D "
    "slices: comparing positional encodings and architectures, studying robustness, shortcut learning and "
    "explanations, teaching. It is a research tool, not a medical device: it is not for diagnosis, triage, "
    "treatment decisions or any other clinical use, and its outputs must not be shown to patients or used in their "
    "care."
)
OUT_OF_SCOPE = [
    "clinical diagnosis or screening of any kind",
    "tumour types, lesions or diseases other than its classes (a metastasis, a stroke or a normal variant is still "
    "forced into one of them)",
    "non-MRI images, non-brain MRI, and MRI unlike its training data (the OOD flag marks some of these, not all)",
    "volume-level or patient-level decisions (predictions are per slice; the volume summary is a maximum over "
    "slices, not a validated volume classifier)",
]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _source_note(paths: list[str]) -> dict[str, Any] | None:
    """The common folder of the training images and the first lines of a ``SOURCE.txt`` in or above it."""
    if not paths:
        return None
    try:
        common = Path(os.path.commonpath(paths))
    except ValueError:
        return None
    note = {"folder": str(common)}
    for d in (common, *list(common.parents)[:2]):
        src = d / "SOURCE.txt"
        if src.is_file():
            lines = [ln.strip() for ln in src.read_text(errors="replace").splitlines() if ln.strip()]
            note["source_txt"] = str(src)
            note["description"] = " ".join(lines[:3])
            break
    return note


def _training_data(run_dir: Path) -> dict[str, Any]:
    manifest = run_dir / "manifest.csv"
    if not manifest.is_file():
        return {"manifest": None, "note": "no manifest.csv in the run (e.g. a CIFAR run)"}

    man = read_manifest(manifest)
    usable = [r for r in man.rows if r.split != EXCLUDED]
    sizes = Counter(r.group for r in usable)
    counts = {s: c for s, c in man.counts().items() if sum(c.values())}
    return {
        "manifest": str(manifest),
        "manifest_sha256": man.sha256,
        "split_fingerprint": man.fingerprint(),
        "classes": man.classes,
        "counts": counts,
        "images": len(usable),
        "excluded": len(man.rows) - len(usable),
        "duplicate_groups": {
            "groups": len(sizes),
            "groups_with_copies": sum(1 for n in sizes.values() if n > 1),
            "note": "exact and near (pHash) duplicates share a group; whole groups are assigned to one split",
        },
        "source": _source_note([str(r.path) for r in usable]),
    }


def _metric(m: dict[str, Any], name: str) -> dict[str, Any] | None:
    v = (m or {}).get(name)
    return None if v is None else {k: v.get(k) for k in ("value", "lo", "hi")}


def _evaluation(tag: str, m: dict[str, Any]) -> dict[str, Any]:
    src = m.get("source") or {}
    external = bool(src.get("external"))
    where = src.get("name") or src.get("data") or src.get("manifest") or "?"
    entry = {
        "tag": tag,
        "external": external,
        "source": {
            "name": (src.get("name") if external or src.get("source") else None)
            or (Path(str(where)).name if src.get("data") else "the run's manifest"),
            "where": where,
            "split": src.get("split"),
        },
        "n": m.get("n"),
        "counts": m.get("counts"),
        "tta": m.get("tta"),
        "img_size": m.get("img_size"),
        "metrics": {k: _metric(m.get("metrics", {}), k) for k in HEADLINE if _metric(m.get("metrics", {}), k)},
        "bootstrap": m.get("bootstrap"),
    }
    if m.get("label_map"):
        entry["label_map"] = m["label_map"]
    if m.get("calibration"):
        c = m["calibration"]
        entry["calibration"] = {"temperature": c.get("temperature"), "at_bound": c.get("at_bound"),
                                "uncalibrated_ece": (c.get("uncalibrated") or {}).get("ece")}  # fmt: skip
    if m.get("dedup"):
        d = m["dedup"]
        entry["dedup"] = {"n": d.get("n"), "n_removed": d.get("n_removed"), "against": d.get("against"),
                          "metrics": {k: _metric(d.get("metrics", {}), k) for k in HEADLINE
                                      if _metric(d.get("metrics", {}), k)}}  # fmt: skip
    return entry


def _evaluations(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    for path in sorted((run_dir / "eval").glob("*/metrics.json")):
        m = _read_json(path)
        if m is not None and "metrics" in m:
            out.append(_evaluation(path.parent.name, m))
    return out


def _probes(run_dir: Path) -> dict[str, Any]:
    audit = _read_json(run_dir / "audit.json")
    if audit is None:
        return {
            "attached": False,
            "how": f"popevit data audit --train {run_dir / 'manifest.csv'} --json {run_dir / 'audit.json'}",
        }
    out: dict[str, Any] = {"attached": True, "file": str(run_dir / "audit.json")}
    if isinstance(audit.get("probes"), dict):
        out["probes"] = audit["probes"]
    for key in ("shortcut_raw", "shortcut_preprocessed", "majority", "num_images", "cross_exact", "cross_near"):
        if audit.get(key) is not None:
            out[key] = audit[key]
    return out


def _limitations(data: dict[str, Any], evaluations: list[dict[str, Any]], classes: list[str]) -> list[str]:
    external = [e for e in evaluations if e["external"]]
    pointer = (
        "see External validation (" + ", ".join(e["source"]["name"] for e in external) + ")"
        if external
        else "no external validation is attached yet: evaluate on another source, e.g. `popevit evaluate RUN "
        "--data br35h/` (such evaluations are listed under External validation)"
    )
    out = [
        "Source confounding: in the Kaggle Brain Tumor MRI training data the notumor class comes from a different "
        "source (Br35H) than the tumour classes (figshare, SARTAJ), so image size, framing and intensity differ "
        "by class; a model can learn the source instead of the anatomy, and internal test figures overstate "
        f"performance on other scanners and hospitals; {pointer}.",
        "Slices, not patients: the data has no patient identifiers, so near-identical slices of one patient can "
        "sit in different splits despite the duplicate grouping, and the image-level bootstrap CIs are too narrow; "
        "read the de-duplicated subset (`popevit evaluate --dedup-against`) where it is reported.",
        "2-D only: one axial slice at a time; DICOM series and NIfTI volumes are classified slice by slice.",
        f"Closed set: every input is assigned to one of {', '.join(classes)}; other findings are not recognised.",
        "The OOD flag is fitted to catch images unlike the training data at 95% recall on validation images; it is "
        "a warning, not a guarantee, and MRI from other scanners may pass it and still be misclassified.",
    ]
    if not any(e.get("calibration") for e in evaluations):
        out.append("Uncalibrated probabilities: no temperature was fitted (`popevit evaluate RUN --calibrate`).")
    return out


def build_card(run_dir: str | Path) -> dict[str, Any]:
    """Collect the model card of a run (see the module docstring) as a JSON-able dict."""

    run_dir = Path(run_dir)
    meta = load_meta(run_dir)
    run = _read_json(run_dir / "run.json") or {}
    weights = run_dir / WEIGHTS
    spec = MODELS.get(meta.name) if meta.name in list_models() else None
    evaluations = _evaluations(run_dir)
    data = _training_data(run_dir)
    ood = _read_json(run_dir / "ood.json")
    config = None
    if (run_dir / "config.yaml").is_file():
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    card = {
        "format": FORMAT,
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
        "run": str(run_dir.resolve()),
        "name": (config or {}).get("name") or run_dir.name,
        "intended_use": {"summary": INTENDED_USE, "out_of_scope": OUT_OF_SCOPE, "research_only": True},
        "model": {
            "name": meta.name,
            "description": spec.description if spec else None,
            "positional_encoding": meta.kwargs.get("pos_enc") if spec is None or spec.is_vit else "built-in",
            "kwargs": meta.kwargs,
            "parameters": param_count(weights) if weights.is_file() else None,
            "weights_sha256": file_sha256(weights) if weights.is_file() else None,
            "classes": meta.classes,
        },
        "training_data": data,
        "training": {
            k: run.get(k)
            for k in (
                "popevit_version",
                "git_commit",
                "epochs",
                "best_epoch",
                "wall_s",
                "images_seen",
                "device",
                "hit_time_cap",
                "budget_wall_s",
            )
            if k in run
        },
        "preprocessing": {
            **meta.preprocess.model_dump(mode="json"),
            "steps": "decode -> grayscale -> head crop -> pad to square -> resize -> percentile clip -> uint8 "
            "(popevit.data.preprocess.preprocess_image), then the eval transform (per-image standardisation, "
            "channel replication)",
        },
        "evaluations": evaluations,
        "ood": None if ood is None else {k: ood.get(k) for k in OOD_KEYS},
        "shortcut_probes": _probes(run_dir),
        "limitations": _limitations(data, evaluations, meta.classes),
    }
    if config is not None:
        card["training"]["seed"] = (config.get("train") or {}).get("seed")
        card["training"]["config"] = str(run_dir / "config.yaml")
    return card


def write_model_card(run_dir: str | Path, *, strict: bool = False) -> Path | None:
    """Write ``RUN/MODEL_CARD.md`` and ``RUN/model_card.json`` (atomically).

    Args:
        run_dir: a run with ``model.json``.
        strict: raise on failure; otherwise print one warning line on stderr and return None, so that a card
            problem never fails the training or evaluation that calls this at its end.

    Returns:
        The Markdown file, or None when it could not be written (``strict=False``).
    """
    run_dir = Path(run_dir)
    try:
        card = build_card(run_dir)
        write_json(run_dir / CARD_JSON, card)
        return atomic_write_text(run_dir / CARD_MD, render_markdown(card))
    except Exception as err:
        if strict:
            raise
        print(f"warning: the model card of {run_dir} was not written ({type(err).__name__}: {err})", file=sys.stderr)
        return None
