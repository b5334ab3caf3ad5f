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
collects, :func:`render_markdown` writes.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from popevit.serve.records import write_json, write_text

CARD_MD = "MODEL_CARD.md"
CARD_JSON = "model_card.json"
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
    from popevit.data import read_manifest
    from popevit.data.manifest import EXCLUDED

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
    from popevit.artifact import WEIGHTS, file_sha256, load_meta, param_count
    from popevit.models import MODELS, list_models

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
        import yaml

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


# ------------------------------------------------------------------------------------------------ markdown


def _ci(m: dict[str, Any] | None) -> str:
    if not m or m.get("value") is None:
        return "n/a"
    if m.get("lo") is None or m.get("hi") is None:
        return f"{m['value']:.3f}"
    return f"{m['value']:.3f} [{m['lo']:.3f}, {m['hi']:.3f}]"


def _eval_table(evals: list[dict[str, Any]], train_size: int | None) -> list[str]:
    lines = [
        "| evaluation | source | n | accuracy | macro AUROC | ECE | tumour sensitivity | tumour specificity |",
        "|---|---|---:|---|---|---|---|---|",
    ]
    for e in evals:
        m = e["metrics"]
        src = e["source"]["name"] + (f" ({e['source']['split']})" if e["source"].get("split") else "")
        other_size = e.get("img_size") and e["img_size"] != train_size
        extras = [x for x in ("TTA" if e.get("tta") else "", f"{e['img_size']} px" if other_size else "") if x]
        name = e["tag"] + (f" ({', '.join(extras)})" if extras else "")
        lines.append(
            f"| {name} | {src} | {e['n']} | {_ci(m.get('accuracy'))} | {_ci(m.get('auroc_macro'))} | "
            f"{_ci(m.get('ece'))} | {_ci(m.get('tumor_sensitivity'))} | {_ci(m.get('tumor_specificity'))} |"
        )
        if e.get("dedup") and e["dedup"].get("n"):
            d = e["dedup"]["metrics"]
            lines.append(
                f"| {e['tag']}, no duplicate in training | {src} | {e['dedup']['n']} | {_ci(d.get('accuracy'))} | "
                f"{_ci(d.get('auroc_macro'))} | {_ci(d.get('ece'))} | {_ci(d.get('tumor_sensitivity'))} | "
                f"{_ci(d.get('tumor_specificity'))} |"
            )
    return lines


def render_markdown(card: dict[str, Any]) -> str:
    """``MODEL_CARD.md`` from :func:`build_card`'s dict."""
    m, data, pre = card["model"], card["training_data"], card["preprocessing"]
    lines = [f"# Model card: {card['name']}", ""]
    lines += [f"Written {card['written']} by popevit from `{card['run']}`. Machine-readable: `{CARD_JSON}`.", ""]
    lines += ["## Intended use", "", card["intended_use"]["summary"], "", "Out of scope:", ""]
    lines += [f"- {x}" for x in card["intended_use"]["out_of_scope"]] + [""]

    lines += ["## Model", ""]
    lines += [f"- architecture: `{m['name']}`" + (f" ({m['description']})" if m.get("description") else "")]
    lines += [f"- positional encoding: `{m['positional_encoding']}`"]
    if m.get("parameters"):
        lines += [f"- parameters: {m['parameters']:,}"]
    lines += [f"- classes (output order): {', '.join(m['classes'])}"]
    lines += [f"- options: `{json.dumps(m['kwargs'])}`"]
    if m.get("weights_sha256"):
        lines += [f"- weights: `model.safetensors`, sha256 `{m['weights_sha256'][:16]}...`"]
    lines += [""]

    lines += ["## Training data", ""]
    if data.get("manifest"):
        src = data.get("source") or {}
        if src.get("description"):
            lines += [f"Source: {src['description']} (`{src.get('source_txt')}`)", ""]
        elif src.get("folder"):
            lines += [f"Images under `{src['folder']}`.", ""]
        splits = [s for s in ("train", "val", "test", "excluded") if s in data["counts"]]
        lines += ["| class | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
        for c in data["classes"]:
            lines.append(f"| {c} | " + " | ".join(str(data["counts"][s].get(c, 0)) for s in splits) + " |")
        dup = data["duplicate_groups"]
        lines += [
            "",
            f"{data['images']} usable images in {dup['groups']} duplicate groups ({dup['groups_with_copies']} with "
            f"more than one image); {dup['note']}; {data['excluded']} rows excluded (unreadable, or duplicates of "
            "test images).",
        ]
        lines += ["", f"Split: `{data['manifest']}` (sha256 `{data['manifest_sha256'][:16]}...`"
                  + (f", content fingerprint `{data['split_fingerprint'][:16]}...`" if data.get("split_fingerprint")
                     else "") + ")."]  # fmt: skip
    else:
        lines += [data.get("note", "unknown")]
    lines += [""]

    lines += ["## Preprocessing", "", pre["steps"] + ".", ""]
    lines += [f"Settings: `{json.dumps({k: v for k, v in pre.items() if k != 'steps'})}`", ""]

    t = card["training"]
    if t:
        lines += ["## Training", ""]
        lines += [f"- {k}: {v}" for k, v in t.items() if v is not None] + [""]

    evals = card["evaluations"]
    internal = [e for e in evals if not e["external"]]
    external = [e for e in evals if e["external"]]
    lines += ["## Evaluation", "", "95% percentile-bootstrap CIs over images in brackets; ECE = top-label expected "
              "calibration error (15 bins).", ""]  # fmt: skip
    lines += ["### Internal evaluation", ""]
    size = pre.get("img_size")
    lines += (_eval_table(internal, size) if internal else ["None yet: `popevit evaluate RUN`."]) + [""]
    lines += ["### External validation", ""]
    if external:
        lines += _eval_table(external, size)
        for e in external:
            if e.get("label_map"):
                lines += ["", f"{e['tag']}: labels mapped as `{json.dumps(e['label_map'])}`."]
    else:
        lines += ["None yet. Internal figures come from the same source as the training data; evaluate on "
                  "another source before trusting them elsewhere."]  # fmt: skip
    lines += [""]
    calibrated = [e for e in evals if e.get("calibration")]
    if calibrated:
        lines += ["### Calibration", ""]
        for e in calibrated:
            c = e["calibration"]
            t_ = c.get("temperature")
            lines.append(
                f"- {e['tag']}: temperature {t_:.3f}" + (" (at its search bound: not identified)" if c.get("at_bound")
                                                          else "")
                + (f", ECE {c['uncalibrated_ece']:.3f} before scaling" if c.get("uncalibrated_ece") is not None
                   else "")
            )  # fmt: skip
        lines += [""]

    ood = card.get("ood")
    lines += ["## Out-of-distribution flag", ""]
    if ood:
        th = ood["thresholds"]
        lines += [f"An image is flagged when energy > {th['energy']:.3f} or input score > {th['input']:.3f} "
                  f"(thresholds for {ood['recall_target']:.0%} recall on {ood['fitted_on']['thresholds']['n']} "
                  f"validation images; measured {ood['val_recall']:.1%}). See `ood.json`.", ""]  # fmt: skip
    else:
        lines += ["Not fitted yet: `popevit predict` or `popevit export` fits it from the run's own images.", ""]

    p = card["shortcut_probes"]
    lines += ["## Shortcut probes", ""]
    if p["attached"]:
        lines += ["Cross-validated accuracy of classifiers that see no anatomy (e.g. image size and intensity "
                  f"statistics), from `{p['file']}`. Far above chance means the labels can be told apart without "
                  "the tumour.", "", "| probe | accuracy | chance |", "|---|---:|---:|"]  # fmt: skip
        chance = p.get("majority")
        for name, v in (p.get("probes") or {}).items():
            lines.append(f"| {name} | {v.get('accuracy', float('nan')):.3f} | {v.get('chance', float('nan')):.3f} |")
        for key, label in (("shortcut_raw", "metadata of the raw files"),
                           ("shortcut_preprocessed", "metadata of the preprocessed images")):  # fmt: skip
            if p.get(key) is not None:
                lines.append(f"| {label} | {p[key]:.3f} | " + (f"{chance:.3f}" if chance is not None else "n/a") + " |")
    else:
        lines += [f"No data audit is attached. Make one with `{p['how']}`; the card shows its probes from then on."]
    lines += [""]

    lines += ["## Known limitations", ""] + [f"- {x}" for x in card["limitations"]] + [""]
    lines += ["## Use", "", "```bash", f"popevit predict {card['run']} scans/ --out predictions",
              f"popevit export {card['run']} --format onnx", f"popevit serve {card['run']}", "```", ""]  # fmt: skip
    return "\n".join(lines)


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
        return write_text(run_dir / CARD_MD, render_markdown(card))
    except Exception as err:
        if strict:
            raise
        print(f"warning: the model card of {run_dir} was not written ({type(err).__name__}: {err})", file=sys.stderr)
        return None
