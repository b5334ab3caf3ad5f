"""``popevit compare``: paired comparisons of runs (or seed groups of runs) on the same images.

For every pair of groups A, B (all runs evaluated on one image set, aligned by image path, :func:`align`):

- **mean +- sd across seeds** of each group's point metrics (sd with ``ddof=1``; 0 runs of spread for one run);
- **pooled paired bootstrap** (the headline test): on each resample of the images, the seed-mean metric of A minus
  the seed-mean metric of B, for macro AUROC and accuracy; percentile CI and bootstrap p-value
  (:func:`popevit.evaluation.stats.paired_bootstrap`). It answers "is recipe A better than recipe B on this
  population of images, averaged over training seeds"; the seed-to-seed spread is shown separately as the sd. It is
  the ordinary paired bootstrap when each group has one run. Each of its p-values also gets a
  Benjamini-Hochberg q-value over every pair of groups for that metric (``scipy.stats.false_discovery_control``):
  an eight-encoding study makes 28 pairs per metric, so more than one p < 0.05 is expected by chance alone (q = p
  for two groups);
- **McNemar's exact test** on correctness and **DeLong's test** per class (one-vs-rest AUROC), both per-model tests,
  so they are reported for each matched pair of runs: runs are matched by their seed suffix (``pope-s0`` with
  ``rope-s0``) when the groups share seeds, else by position.

Runs are grouped by folder name with a trailing seed suffix removed (``-s0``, ``_seed1``, ...), so the shell glob
``popevit compare runs/pope-s* runs/rope-s*`` yields the groups ``pope`` and ``rope``.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import false_discovery_control

from popevit.data.manifest import below_common_folder, read_manifest, same_images
from popevit.evaluation.archive import archived_stale, read_archive
from popevit.evaluation.evaluate import (
    METRICS,
    default_eval_dir,
    evaluate_run,
    resolve_split,
    source_location,
    write_json,
)
from popevit.evaluation.labelmap import parse_label_map
from popevit.evaluation.metrics import point_metrics
from popevit.evaluation.predictions import PREDICTIONS, Predictions
from popevit.evaluation.stats import delong_test, mcnemar_exact, paired_bootstrap
from popevit.io import atomic_write_text, read_json
from popevit.progress import track

log = logging.getLogger(__name__)

SEED_SUFFIX = re.compile(r"^(?P<base>.+?)[-_.](?:s|seed)[-_]?(?P<seed>\d+)$")
SUMMARY_METRICS = ("auroc_macro", "accuracy", "balanced_accuracy", "f1_macro", "log_loss", "ece")
TESTED_METRICS = ("auroc_macro", "accuracy")
TUMOR_METRICS = ("tumor_sensitivity", "tumor_specificity")  # also tested on tumour / no-tumour data (--label-map)


def _metrics_for(classes: Sequence[str], base: tuple[str, ...]) -> tuple[str, ...]:
    """``base``, plus tumour sensitivity and specificity when the classes are tumour / no tumour."""
    return base + TUMOR_METRICS if sorted(classes) == ["notumor", "tumor"] else base


def split_seed(name: str) -> tuple[str, int | None]:
    """``"pope-s3"`` -> ``("pope", 3)``, also ``pope_seed1`` and ``pos_enc-pope_seed-2`` (sweep trials); a name
    without a seed suffix -> ``(name, None)``."""
    m = SEED_SUFFIX.match(name)
    return (m["base"], int(m["seed"])) if m else (name, None)


def run_name(run: str | Path) -> str:
    """The run's folder name as the user gave it: ``.`` and ``..`` are made absolute, but a symlink keeps its own name
    (a run linked into a study folder under another name is grouped by the link)."""
    return Path(os.path.abspath(run)).name


def group_runs(runs: Sequence[str | Path]) -> list[list[Path]]:
    """Group run folders by name with the seed suffix removed, keeping first-seen order.

    Args:
        runs: run directories, e.g. the expansion of ``runs/pope-s* runs/rope-s*``.

    Returns:
        One list per group.
    """
    groups: dict[str, list[Path]] = {}
    for r in runs:
        groups.setdefault(split_seed(run_name(r))[0], []).append(Path(r))
    return list(groups.values())


def group_name(runs: Sequence[Path]) -> str:
    bases = {split_seed(run_name(r))[0] for r in runs}
    return bases.pop() if len(bases) == 1 else "+".join(run_name(r) for r in runs)


def group_names(groups: Sequence[Sequence[Path]]) -> list[str]:
    """One name per group (:func:`group_name`), made unique: groups that would share a name are named by their runs
    (``compare --no-group pope-s0 pope-s1`` gives ``pope-s0`` and ``pope-s1``, not ``pope`` twice)."""
    names = [group_name(g) for g in groups]
    return ["+".join(run_name(r) for r in g) if names.count(n) > 1 else n for n, g in zip(names, groups, strict=True)]


def warn_mixed_models(groups: Sequence[Sequence[Path]]) -> None:
    """Log a warning for every group whose runs are different models (name or keyword arguments in ``model.json``).

    Runs are grouped as seeds by folder name alone, so ``vit-s8`` and ``vit-s16`` (patch sizes, not seeds) would be
    pooled as seeds 8 and 16 of ``vit``."""
    from popevit.artifact import META, load_meta

    for g in groups:
        models = {run_name(r): load_meta(r) for r in g if (Path(r) / META).is_file()}
        kinds = {(m.name, json.dumps(m.kwargs, sort_keys=True)) for m in models.values()}
        if len(kinds) > 1:
            log.warning(
                "group %r pools different models as seeds: %s; name the runs <model>-s<seed> so that one group is "
                "one model, or pass --no-group",
                group_name(g),
                {n: f"{m.name} {m.kwargs}" for n, m in models.items()},
            )


def run_predictions(
    run: Path,
    *,
    data: str | Path | None = None,
    manifest: str | Path | None = None,
    split: str | None = "test",
    tta: bool = False,
    img_size: int | None = None,
    calibrate: bool = False,
    label_map: str | None = None,
    source_name: str | None = None,
    **eval_kwargs: Any,
) -> Predictions:
    """A run's predictions on a data source (optionally at another input size, optionally temperature-scaled, mapped
    onto other classes with ``label_map``, or one ``source_name`` of a manifest of several): reused from
    ``RUN/eval/<tag>/`` when there, else evaluated now."""
    split = resolve_split(data, split)
    archived = read_archive(run)
    eval_dir = predictions_dir(run, archived, data, manifest, split, tta, img_size, calibrate, source_name)
    stale = stale_predictions(eval_dir, run, data=data, manifest=manifest, split=split, label_map=label_map,
                              source_name=source_name)  # fmt: skip
    if stale is not None and archived is not None:
        raise ValueError(_archived_refusal(run, stale))
    if stale is not None:
        if (eval_dir / PREDICTIONS).is_file():
            log.warning("re-evaluating %s: the predictions in %s cannot be reused (%s)", run, eval_dir, stale)
        done = evaluate_run(
            run,
            data=data,
            manifest=manifest,
            split=split,
            tta=tta,
            out=eval_dir,
            img_size=img_size,
            calibrate=calibrate,
            label_map=label_map,
            source_name=source_name,
            **eval_kwargs,
        )
        if done["source"].get("skipped"):
            log.warning("%s: %d files skipped, each with its reason in %s", run, len(done["source"]["skipped"]),
                        eval_dir / "skipped.csv")  # fmt: skip
    preds = Predictions.load(eval_dir / PREDICTIONS)
    preds.source_fingerprint = made_on_fingerprint(run, eval_dir)
    return preds


def predictions_dir(
    run: Path,
    archived: dict[str, Any] | None,
    data: str | Path | None,
    manifest: str | Path | None,
    split: str | None,
    tta: bool,
    img_size: int | None,
    calibrate: bool,
    source_name: str | None = None,
) -> Path:
    """Where a run's predictions on this source are, or go: ``RUN/eval/<tag>/``.

    ``archived`` is the run's ``archive.json`` record (:func:`popevit.evaluation.archive.read_archive`), None for a run
    folder with its weights. An archived run evaluated on its own manifest holds them under the own-manifest tag
    (``test``), not under the tag that ``--manifest FILE`` gives (``FILE-test``). Asked for a manifest it holds no
    evaluation under, it is pointed at its own manifest's, which :func:`popevit.evaluation.archive.archived_stale` then
    accepts only when that manifest holds the same images (same bytes or the same fingerprint) as ``FILE``, and
    refuses with the reason otherwise."""
    eval_dir = default_eval_dir(run, data, manifest, split, tta, img_size, calibrate, source_name)
    named_manifest = manifest is not None and data is None
    if archived is not None and named_manifest and eval_dir.name not in archived["evaluations"]:
        return default_eval_dir(run, None, None, split, tta, img_size, calibrate, source_name)
    return eval_dir


def made_on_fingerprint(run: Path, eval_dir: Path) -> str | None:
    """The :meth:`~popevit.data.manifest.Manifest.fingerprint` of the manifest that the predictions in ``eval_dir``
    were made on: as an archive recorded it, else read from the manifest their ``metrics.json`` names; None for an
    image folder, or a manifest that is gone or has no fingerprint."""
    archived = read_archive(run)
    if archived is not None:
        return archived["evaluations"].get(eval_dir.name, {}).get("source_fingerprint")
    source = read_json(eval_dir / METRICS, "metrics.json of an evaluation").get("source", {})
    made_on = Path(source.get("resolved") or source.get("manifest") or "")
    if "data" in source or not made_on.is_file():
        return None
    stat = made_on.stat()
    return _manifest_fingerprint(str(made_on.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _manifest_fingerprint(path: str, mtime_ns: int, size: int) -> str | None:
    """A manifest's fingerprint, read once per version of the file (a study asks for it per run and per size)."""
    try:
        return read_manifest(path).fingerprint()
    except ValueError:
        return None


def _archived_refusal(run: Path, why: str) -> str:
    return (
        f"{run} is an archived run (`popevit archive`: no weights), so it cannot be evaluated again, and its "
        f"predictions cannot stand for this evaluation: {why}; compare it on what it was evaluated on (its own "
        "manifest, at a size it holds, with the same --tta and --calibrate), or use the original run folder"
    )


def check_archived_runs(
    runs: Sequence[Path],
    *,
    data: str | Path | None = None,
    manifest: str | Path | None = None,
    split: str | None = "test",
    tta: bool = False,
    img_sizes: Sequence[int | None] = (None,),
    calibrate: bool = False,
) -> None:
    """Refuse an archived run that holds no usable predictions for one of these evaluations, before any run is
    evaluated (minutes on a CPU) only for the comparison to stop at the archived one."""
    split = resolve_split(data, split)
    for run in runs:
        record = read_archive(run)
        for size in img_sizes if record is not None else ():
            eval_dir = predictions_dir(run, record, data, manifest, split, tta, size, calibrate)
            why = archived_stale(record, eval_dir, data=data, manifest=manifest, split=split)
            if why is not None:
                raise ValueError(_archived_refusal(Path(run), why))


def stale_predictions(
    eval_dir: Path,
    run: Path,
    *,
    data: str | Path | None,
    manifest: str | Path | None,
    split: str | None,
    label_map: str | None = None,
    source_name: str | None = None,
) -> str | None:
    """Why the predictions in ``eval_dir`` cannot stand for evaluating ``run`` on this source, or None when they can.

    The folder's name (:func:`popevit.evaluation.evaluate.eval_tag`) keeps only the last part of a source's path, and
    says nothing of the weights, so another source or a retrained run can map to the same folder: ``metrics.json``
    decides. Two manifests with the same bytes, or the same fingerprint (the same split of the data stored in
    another folder, :func:`popevit.data.manifest.same_images`), are the same source. Records written before
    ``metrics.json`` held the weights' hash are checked by modification time instead. An archived run
    (:mod:`popevit.evaluation.archive`) is judged by its ``archive.json``.
    """
    from popevit.artifact import WEIGHTS, file_sha256

    preds, metrics = eval_dir / PREDICTIONS, eval_dir / METRICS
    archived = read_archive(run)
    if archived is not None:
        return archived_stale(archived, eval_dir, data=data, manifest=manifest, split=split)
    if not (preds.is_file() and metrics.is_file()):
        return "none there"
    record = read_json(metrics, "metrics.json of an evaluation")
    weights = Path(run) / WEIGHTS
    if weights.is_file():
        recorded = record.get("model", {}).get("weights_sha256")
        if recorded is not None and recorded != file_sha256(weights):
            return f"{weights} changed since they were made"
        if recorded is None and weights.stat().st_mtime > preds.stat().st_mtime:
            return f"{weights} is newer than they are"
    source = record.get("source", {})
    made_on = source.get("resolved") or str(Path(source.get("data") or source.get("manifest") or "").resolve())
    wanted = source_location(run, data, manifest)
    files = Path(made_on).is_file() and Path(wanted).is_file()
    if made_on != wanted and not (files and same_images(made_on, wanted)):  # a copied run, a moved dataset
        return f"they were made on {made_on}, not {wanted}"
    if source.get("split") != split:
        return f"they were made on split {source.get('split')!r}, not {split!r}"
    if source.get("source") != source_name:
        return f"they were made on source {source.get('source')!r}, not {source_name!r}"
    made_rules = record.get("label_map", {}).get("rules", [])
    wanted_rules = ["|".join(pats) + "=" + target for pats, target in parse_label_map(label_map)]
    if made_rules != wanted_rules:
        return f"they were made with label map {made_rules or 'none'}, not {wanted_rules or 'none'}"
    return None


def align(preds: Sequence[Predictions], names: Sequence[str]) -> list[Predictions]:
    """Put every run's predictions on the same image order and class order; error if images or labels differ.

    Images are matched by path. Predictions made on manifests with the same fingerprint (the same images, labels,
    splits and groups; ``Predictions.source_fingerprint``) are matched by the path below the folder that holds them
    all when their folders differ: runs made, or archived, on another machine. Either way the labels must agree.
    """
    ref, ref_name = preds[0], names[0]
    ref_set = set(ref.paths)
    if len(ref_set) != len(ref.paths):
        raise ValueError(f"{ref_name}: predictions list some images twice; re-run `popevit evaluate`")
    out = [ref]
    for p, name in zip(preds[1:], names[1:], strict=True):
        other = set(p.paths)
        moved = p.source_fingerprint is not None and p.source_fingerprint == ref.source_fingerprint
        if other != ref_set and moved:  # the same images, stored under another folder
            keys, ref_keys = below_common_folder(p.paths), below_common_folder(ref.paths)
            if keys is not None and ref_keys is not None and len(set(keys)) == len(keys) and set(keys) == set(ref_keys):
                ref_of = dict(zip(ref_keys, ref.paths, strict=True))
                p = Predictions([ref_of[k] for k in keys], p.y, p.proba, p.classes, p.source_fingerprint)
                other = set(p.paths)
        if other != ref_set:
            only_ref, only_other = sorted(ref_set - other), sorted(other - ref_set)
            same_names = not moved and below_common_folder(sorted(other)) == below_common_folder(sorted(ref_set))
            raise ValueError(
                f"runs were evaluated on different images: {len(only_ref)} only in {ref_name} (e.g. {only_ref[:2]}), "
                f"{len(only_other)} only in {name} (e.g. {only_other[:2]}); compare on one data source, e.g. "
                "--manifest FILE --split test or --data DIR"
                + (
                    ". The names below their folders agree, but nothing shows that they are the same images: pairing "
                    "data stored in two places needs each run evaluated on a manifest with content hashes (`popevit "
                    "data split`), both of the same split"
                    if same_names
                    else ""
                )
            )
        q = p.with_class_order(ref.classes).reorder(ref.paths)
        if not np.array_equal(q.y, ref.y):
            bad = int((q.y != ref.y).sum())
            raise ValueError(
                f"{bad} images have different labels in {ref_name} and {name}; evaluate both on one source"
            )
        out.append(q)
    return out


def match_pairs(a: Sequence[Path], b: Sequence[Path]) -> list[tuple[int, int]]:
    """Run index pairs for per-model tests: by shared seed suffix (``pope-s0`` with ``rope-s0``), else by position."""
    seeds_a = [split_seed(run_name(r))[1] for r in a]
    seeds_b = [split_seed(run_name(r))[1] for r in b]
    common = [s for s in seeds_a if s is not None and s in seeds_b]
    if common:
        return [(seeds_a.index(s), seeds_b.index(s)) for s in common]
    return [(i, i) for i in range(min(len(a), len(b)))]


def _mean_sd(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    sd = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()), "sd": sd, "values": [float(v) for v in arr]}


def compare_predictions(
    groups: Sequence[Sequence[Predictions]],
    names: Sequence[str],
    run_names: Sequence[Sequence[str]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    pairs: dict[tuple[int, int], list[tuple[int, int]]] | None = None,
) -> dict[str, Any]:
    """Compare groups of aligned predictions (see the module docstring).

    Args:
        groups: per group, its runs' predictions, all aligned to the same images and classes.
        names: group names.
        run_names: per group, its run names.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.
        pairs: per group pair (i, j), the matched run indices for McNemar/DeLong; default by position.

    Returns:
        The comparison as a JSON-able dict.
    """
    ref = groups[0][0]
    classes, y = ref.classes, ref.y
    summary = []
    for name, runs, preds in zip(names, run_names, groups, strict=True):
        pts = [point_metrics(y, p.proba, classes) for p in preds]
        shown = _metrics_for(classes, SUMMARY_METRICS)
        summary.append(
            {"name": name, "runs": list(runs), "metrics": {m: _mean_sd([pt[m] for pt in pts]) for m in shown}}
        )
    comparisons = []
    for i, j in combinations(range(len(groups)), 2):
        boot = paired_bootstrap(
            y,
            [p.proba for p in groups[i]],
            [p.proba for p in groups[j]],
            classes,
            metrics=_metrics_for(classes, TESTED_METRICS),
            n_boot=n_boot,
            seed=seed,
        )
        matched = (pairs or {}).get((i, j)) or [(k, k) for k in range(min(len(groups[i]), len(groups[j])))]
        per_pair = []
        for ia, ib in matched:
            pa, pb = groups[i][ia], groups[j][ib]
            delong = {}
            for k, c in enumerate(classes):
                target = y == k
                if 2 <= target.sum() <= len(y) - 2:
                    delong[c] = delong_test(target, pa.proba[:, k], pb.proba[:, k])
            per_pair.append(
                {
                    "a": run_names[i][ia],
                    "b": run_names[j][ib],
                    "mcnemar": mcnemar_exact(pa.correct, pb.correct),
                    "delong": delong,
                }
            )
        comparisons.append({"a": names[i], "b": names[j], "paired_bootstrap": boot, "pairs": per_pair})
    add_q_values(comparisons)
    return {
        "n": len(y),
        "classes": classes,
        "bootstrap": {
            "method": "percentile, paired (same image resample for every run)",
            "n_boot": n_boot,
            "seed": seed,
            "level": 0.95,
            "statistic": "seed-mean(A) - seed-mean(B)",
        },
        "groups": summary,
        "comparisons": comparisons,
    }


def add_q_values(comparisons: list[dict[str, Any]]) -> None:
    """Give every paired-bootstrap result a ``q_value``: its p adjusted by Benjamini-Hochberg over all pairs of groups
    for the same metric (one family per metric; Benjamini & Hochberg 1995). Undefined p-values stay undefined."""
    for metric in {m for c in comparisons for m in c["paired_bootstrap"]}:
        results = [c["paired_bootstrap"][metric] for c in comparisons if metric in c["paired_bootstrap"]]
        defined = [r for r in results if np.isfinite(r["p_value"])]
        q = false_discovery_control([r["p_value"] for r in defined], method="bh") if defined else []
        for r in results:
            r["q_value"] = float("nan")
        for r, qv in zip(defined, q, strict=True):
            r["q_value"] = float(qv)


def compare_runs(
    groups: Sequence[Sequence[str | Path]],
    *,
    data: str | Path | None = None,
    manifest: str | Path | None = None,
    split: str | None = "test",
    tta: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
    out: str | Path | None = None,
    batch_size: int = 64,
    device: str | None = None,
    calibrate: bool = False,
    img_size: int | None = None,
    label_map: str | None = None,
    source_name: str | None = None,
) -> dict[str, Any]:
    """Compare groups of runs on the same images; write ``compare.json`` and ``compare.md`` into ``out``.

    Each run's predictions are reused from ``RUN/eval/<tag>/predictions.csv`` when present (``popevit evaluate``
    writes them) or computed now. Default data: each run's own ``manifest.csv``, split ``test``; the runs must then
    share the same test images, otherwise this raises and asks for an explicit ``--manifest`` or ``--data``.

    Args:
        groups: groups of run directories (one run per group for a plain A-vs-B comparison); see :func:`group_runs`.
        data: image folder to compare on.
        manifest: manifest CSV to compare on (with ``split``).
        split: manifest split.
        tta: use horizontal-flip test-time augmentation.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.
        out: folder for ``compare.json`` and ``compare.md``; nothing is written when None.
        batch_size: inference batch size, for runs not yet evaluated.
        device: torch device, for runs not yet evaluated.
        calibrate: compare temperature-scaled probabilities (``popevit evaluate --calibrate``).
        img_size: compare at this input size instead of each run's training size (resolution extrapolation; the
            predictions of ``popevit evaluate --img-size`` are reused).
        label_map: compare on other classes, e.g. Br35H's yes/no (:mod:`popevit.evaluation.labelmap`); tumour
            sensitivity and specificity are then tested too.
        source_name: compare on one source of a manifest of several (``popevit data split --add``).

    Returns:
        The comparison (see :func:`compare_predictions`), with the data source added.
    """
    groups = [[Path(r) for r in g] for g in groups]
    if len(groups) < 2 or any(not g for g in groups):
        raise ValueError(
            f"compare needs at least two non-empty groups of runs, got {[len(g) for g in groups]}; "
            "pass two or more run folders"
        )
    warn_mixed_models(groups)
    flat = [r for g in groups for r in g]
    check_archived_runs(
        flat, data=data, manifest=manifest, split=split, tta=tta, img_sizes=[img_size], calibrate=calibrate
    )
    preds = [
        run_predictions(
            r,
            data=data,
            manifest=manifest,
            split=split,
            tta=tta,
            img_size=img_size,
            calibrate=calibrate,
            label_map=label_map,
            source_name=source_name,
            n_boot=n_boot,
            seed=seed,
            batch_size=batch_size,
            device=device,
        )
        for r in track(flat, f"predictions of {len(flat)} runs")
    ]
    preds = align(preds, [str(r) for r in flat])
    grouped, k = [], 0
    for g in groups:
        grouped.append(preds[k : k + len(g)])
        k += len(g)
    pairs = {(i, j): match_pairs(groups[i], groups[j]) for i, j in combinations(range(len(groups)), 2)}
    result = compare_predictions(
        grouped,
        group_names(groups),
        [[run_name(r) for r in g] for g in groups],
        n_boot=n_boot,
        seed=seed,
        pairs=pairs,
    )
    result["source"] = {
        "data": str(data) if data else None,
        "manifest": str(manifest) if manifest else None,
        "split": resolve_split(data, split),
        "tta": tta,
        "img_size": img_size,
        "label_map": label_map,
        "source": source_name,
    }
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "compare.json", result)
        atomic_write_text(out / "compare.md", to_markdown(result))
        result["out"] = str(out)
    return result


def _fmt_p(p: float) -> str:
    if not np.isfinite(p):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def to_markdown(result: dict[str, Any]) -> str:
    """The comparison as Markdown tables."""
    size = result.get("source", {}).get("img_size")
    lines = [f"# Comparison on {result['n']} images" + (f" at {size} px" if size else ""), ""]
    lines += ["## Groups (mean ± sd across seeds)", ""]
    shown = _metrics_for(result["classes"], SUMMARY_METRICS)
    lines.append("| group | runs | " + " | ".join(shown) + " |")
    lines.append("|---|---:|" + "---:|" * len(shown))
    for g in result["groups"]:
        cells = [f"{g['metrics'][m]['mean']:.4f} ± {g['metrics'][m]['sd']:.4f}" for m in shown if m in g["metrics"]]
        lines.append(f"| {g['name']} | {len(g['runs'])} | " + " | ".join(cells) + " |")
    b = result["bootstrap"]
    lines += ["", f"## Paired bootstrap of A − B ({b['n_boot']} resamples, seed {b['seed']}, {b['statistic']})", ""]
    lines.append("| A | B | metric | A | B | A − B | 95% CI | p | q (BH) |")
    lines.append("|---|---|---|---:|---:|---:|---|---:|---:|")
    for c in result["comparisons"]:
        for m, r in c["paired_bootstrap"].items():
            q = r.get("q_value", float("nan"))  # absent from compare.json files written before q-values
            valid = r.get("n_valid", b["n_boot"])  # resamples where the metric is defined (every class drawn)
            note = f" (on {valid} of {b['n_boot']} resamples)" if valid < b["n_boot"] else ""
            lines.append(
                f"| {c['a']} | {c['b']} | {m} | {r['a']:.4f} | {r['b']:.4f} | {r['diff']:+.4f} | "
                f"[{r['lo']:+.4f}, {r['hi']:+.4f}]{note} | {_fmt_p(r['p_value'])} | {_fmt_p(q)} |"
            )
    lines += ["", "## McNemar (exact) and DeLong per matched pair of runs", ""]
    classes = result["classes"]
    lines.append("| A | B | McNemar b/c | McNemar p | " + " | ".join(f"DeLong {c} ΔAUROC (p)" for c in classes) + " |")
    lines.append("|---|---|---:|---:|" + "---:|" * len(classes))
    for c in result["comparisons"]:
        for pr in c["pairs"]:
            mc = pr["mcnemar"]
            dl = [
                f"{pr['delong'][k]['diff']:+.4f} ({_fmt_p(pr['delong'][k]['p_value'])})" if k in pr["delong"] else "n/a"
                for k in classes
            ]
            lines.append(
                f"| {pr['a']} | {pr['b']} | {mc['b']}/{mc['c']} | {_fmt_p(mc['p_value'])} | " + " | ".join(dl) + " |"
            )
    lines += [
        "",
        "q (BH): the bootstrap p adjusted for the false discovery rate over every pair of groups, per metric "
        "(Benjamini-Hochberg). b = images only A classifies correctly, c = only B. McNemar and DeLong p-values are "
        "not corrected for multiple comparisons.",
        "",
    ]
    return "\n".join(lines)
