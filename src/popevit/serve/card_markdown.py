"""``MODEL_CARD.md``: the Markdown of a model card collected by :func:`popevit.serve.card.build_card`.

Computing and rendering apart: this module only formats the card's dict, one function per section.
"""

from __future__ import annotations

import json
from typing import Any

CARD_MD = "MODEL_CARD.md"
CARD_JSON = "model_card.json"


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


def _model_section(m: dict[str, Any]) -> list[str]:
    """The architecture, its options and weights."""
    lines: list[str] = []
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
    return lines


def _data_section(data: dict[str, Any]) -> list[str]:
    """The training data: source, counts per split and class, duplicate groups, the split file."""
    lines: list[str] = []
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
    return lines


def _evaluation_section(evals: list[dict[str, Any]], size: int | None) -> list[str]:
    """Internal and external evaluations with their CIs, and the fitted temperatures."""
    lines: list[str] = []
    internal = [e for e in evals if not e["external"]]
    external = [e for e in evals if e["external"]]
    lines += ["## Evaluation", "", "95% percentile-bootstrap CIs over images in brackets; ECE = top-label expected "
              "calibration error (15 bins).", ""]  # fmt: skip
    lines += ["### Internal evaluation", ""]
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
    return lines


def _ood_section(ood: dict[str, Any] | None) -> list[str]:
    """The out-of-distribution flag and its thresholds."""
    lines: list[str] = []
    lines += ["## Out-of-distribution flag", ""]
    if ood:
        th = ood["thresholds"]
        lines += [f"An image is flagged when energy > {th['energy']:.3f} or input score > {th['input']:.3f} "
                  f"(thresholds for {ood['recall_target']:.0%} recall on {ood['fitted_on']['thresholds']['n']} "
                  f"validation images; measured {ood['val_recall']:.1%}). See `ood.json`.", ""]  # fmt: skip
    else:
        lines += ["Not fitted yet: `popevit predict` or `popevit export` fits it from the run's own images.", ""]
    return lines


def _probe_section(p: dict[str, Any]) -> list[str]:
    """The shortcut probes of an attached data audit."""
    lines: list[str] = []
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
    return lines


def render_markdown(card: dict[str, Any]) -> str:
    """``MODEL_CARD.md`` from :func:`popevit.serve.card.build_card`'s dict."""
    pre = card["preprocessing"]
    lines = [f"# Model card: {card['name']}", ""]
    lines += [f"Written {card['written']} by popevit from `{card['run']}`. Machine-readable: `{CARD_JSON}`.", ""]
    lines += ["## Intended use", "", card["intended_use"]["summary"], "", "Out of scope:", ""]
    lines += [f"- {x}" for x in card["intended_use"]["out_of_scope"]] + [""]
    lines += _model_section(card["model"]) + _data_section(card["training_data"])
    lines += ["## Preprocessing", "", pre["steps"] + ".", ""]
    lines += [f"Settings: `{json.dumps({k: v for k, v in pre.items() if k != 'steps'})}`", ""]
    t = card["training"]
    if t:
        lines += ["## Training", ""]
        lines += [f"- {k}: {v}" for k, v in t.items() if v is not None] + [""]
    lines += _evaluation_section(card["evaluations"], pre.get("img_size"))
    lines += _ood_section(card.get("ood")) + _probe_section(card["shortcut_probes"])
    lines += ["## Known limitations", ""] + [f"- {x}" for x in card["limitations"]] + [""]
    lines += ["## Use", "", "```bash", f"popevit predict {card['run']} scans/ --out predictions",
              f"popevit export {card['run']} --format onnx", f"popevit serve {card['run']}", "```", ""]  # fmt: skip
    return "\n".join(lines)
