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
``popevit compare runs/pope-s* runs/rope-s*`` yields the groups ``pope`` and ``rope``
(:mod:`popevit.evaluation.groups`). Predictions come from :mod:`popevit.evaluation.prediction_cache`, the statistics
from :mod:`popevit.evaluation.stats`, and the Markdown from :mod:`popevit.evaluation.render`.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import false_discovery_control

from popevit.data.manifest import below_common_folder
from popevit.evaluation.evaluate import write_json
from popevit.evaluation.groups import (
    group_name,
    group_names,
    group_runs,
    match_pairs,
    run_name,
    split_seed,
    warn_mixed_models,
)
from popevit.evaluation.metrics import SUMMARY_METRICS, TESTED_METRICS, point_metrics, with_tumor_metrics
from popevit.evaluation.prediction_cache import check_archived_runs, run_predictions
from popevit.evaluation.predictions import Predictions
from popevit.evaluation.render import compare_markdown as to_markdown
from popevit.evaluation.source import EvalSource
from popevit.evaluation.stats import delong_test, mcnemar_exact, paired_bootstrap
from popevit.io import atomic_write_text
from popevit.progress import track

__all__ = [  # the grouping and the Markdown are re-exported for the command line and the report
    "add_q_values",
    "align",
    "compare_predictions",
    "compare_runs",
    "group_name",
    "group_names",
    "group_runs",
    "match_pairs",
    "run_name",
    "split_seed",
    "to_markdown",
]


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
        shown = with_tumor_metrics(classes, SUMMARY_METRICS)
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
            metrics=with_tumor_metrics(classes, TESTED_METRICS),
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
    source: EvalSource | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    out: str | Path | None = None,
    batch_size: int = 64,
    device: str | None = None,
    **source_fields: Any,
) -> dict[str, Any]:
    """Compare groups of runs on the same images; write ``compare.json`` and ``compare.md`` into ``out``.

    Each run's predictions are reused from ``RUN/eval/<tag>/predictions.csv`` when present (``popevit evaluate``
    writes them) or computed now. Default data: each run's own ``manifest.csv``, split ``test``; the runs must then
    share the same test images, otherwise this raises and asks for an explicit ``--manifest`` or ``--data``.

    Args:
        groups: groups of run directories (one run per group for a plain A-vs-B comparison); see
            :func:`popevit.evaluation.groups.group_runs`.
        source: what to compare on (:class:`popevit.evaluation.source.EvalSource`): the images, TTA, temperature
            scaling, another input size (the predictions of ``popevit evaluate --img-size`` are reused), a label map
            (e.g. Br35H's yes/no; tumour sensitivity and specificity are then tested too), one source of a manifest
            of several.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.
        out: folder for ``compare.json`` and ``compare.md``; nothing is written when None.
        batch_size: inference batch size, for runs not yet evaluated.
        device: torch device, for runs not yet evaluated.
        **source_fields: the fields of ``source`` as keywords (``data=``, ``split=``, ...), instead of ``source``.

    Returns:
        The comparison (see :func:`compare_predictions`), with the data source added.
    """
    source = EvalSource.of(source, **source_fields)
    groups = [[Path(r) for r in g] for g in groups]
    if len(groups) < 2 or any(not g for g in groups):
        raise ValueError(
            f"compare needs at least two non-empty groups of runs, got {[len(g) for g in groups]}; "
            "pass two or more run folders"
        )
    warn_mixed_models(groups)
    flat = [r for g in groups for r in g]
    check_archived_runs(flat, source, img_sizes=[source.img_size])
    eval_kwargs = {"n_boot": n_boot, "seed": seed, "batch_size": batch_size, "device": device}
    runs = track(flat, f"predictions of {len(flat)} runs")
    preds = align([run_predictions(r, source, **eval_kwargs) for r in runs], [str(r) for r in flat])
    grouped, k = [], 0
    for g in groups:
        grouped.append(preds[k : k + len(g)])
        k += len(g)
    pairs = {(i, j): match_pairs(groups[i], groups[j]) for i, j in combinations(range(len(groups)), 2)}
    names = [[run_name(r) for r in g] for g in groups]
    result = compare_predictions(grouped, group_names(groups), names, n_boot=n_boot, seed=seed, pairs=pairs)
    result["source"] = source.describe()
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "compare.json", result)
        atomic_write_text(out / "compare.md", to_markdown(result))
        result["out"] = str(out)
    return result
