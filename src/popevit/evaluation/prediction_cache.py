"""A run's predictions on a source, reused from ``RUN/eval/<tag>/`` when they can stand for it, else made now.

``popevit evaluate`` leaves ``predictions.csv`` and ``metrics.json`` in ``RUN/eval/<tag>`` (:meth:`EvalSource.tag`).
``compare`` and ``study`` reuse them only when ``metrics.json`` says they were made on the same source and weights
(:func:`stale_predictions` names the reason when not), so a copied run, a moved dataset or retrained weights are never
served stale predictions. An archived run (:mod:`popevit.evaluation.archive`) has no weights to evaluate again: its
predictions stand only for the evaluations it holds, and anything else is refused with the reason.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from popevit.artifact import WEIGHTS, file_sha256
from popevit.data.manifest import read_manifest, same_images
from popevit.evaluation.archive import archived_stale, read_archive
from popevit.evaluation.evaluate import METRICS, evaluate_run
from popevit.evaluation.labelmap import parse_label_map
from popevit.evaluation.predictions import PREDICTIONS, Predictions
from popevit.evaluation.source import EvalSource
from popevit.io import read_json

log = logging.getLogger(__name__)


def run_predictions(run: Path, source: EvalSource, **eval_kwargs: Any) -> Predictions:
    """A run's predictions on ``source``: reused from ``RUN/eval/<tag>/`` when there, else evaluated now.

    Args:
        run: a run folder, or an archived run.
        source: what to predict on, and how (input size, TTA, temperature scaling, label map, source name).
        **eval_kwargs: options of :func:`popevit.evaluation.evaluate.evaluate_run` for a run not yet evaluated
            (``n_boot``, ``seed``, ``batch_size``, ``device``, ...).

    Returns:
        The predictions, with ``source_fingerprint`` set to the fingerprint of the manifest they were made on.
    """
    source = source.resolved()
    archived = read_archive(run)
    eval_dir = predictions_dir(run, archived, source)
    stale = stale_predictions(eval_dir, run, source)
    if stale is not None and archived is not None:
        raise ValueError(_archived_refusal(run, stale))
    if stale is not None:
        if (eval_dir / PREDICTIONS).is_file():
            log.warning("re-evaluating %s: the predictions in %s cannot be reused (%s)", run, eval_dir, stale)
        done = evaluate_run(run, source, out=eval_dir, **eval_kwargs)
        if done["source"].get("skipped"):
            log.warning("%s: %d files skipped, each with its reason in %s", run, len(done["source"]["skipped"]),
                        eval_dir / "skipped.csv")  # fmt: skip
    preds = Predictions.load(eval_dir / PREDICTIONS)
    preds.source_fingerprint = made_on_fingerprint(run, eval_dir)
    return preds


def predictions_dir(run: Path, archived: dict[str, Any] | None, source: EvalSource) -> Path:
    """Where a run's predictions on this source are, or go: ``RUN/eval/<tag>/``.

    ``archived`` is the run's ``archive.json`` record (:func:`popevit.evaluation.archive.read_archive`), None for a run
    folder with its weights. An archived run evaluated on its own manifest holds them under the own-manifest tag
    (``test``), not under the tag that ``--manifest FILE`` gives (``FILE-test``). Asked for a manifest it holds no
    evaluation under, it is pointed at its own manifest's, which :func:`popevit.evaluation.archive.archived_stale` then
    accepts only when that manifest holds the same images (same bytes or the same fingerprint) as ``FILE``, and
    refuses with the reason otherwise."""
    eval_dir = source.eval_dir(run)
    named_manifest = source.manifest is not None and source.data is None
    if archived is not None and named_manifest and eval_dir.name not in archived["evaluations"]:
        return replace(source, manifest=None).eval_dir(run)
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


def check_archived_runs(runs: Sequence[Path], source: EvalSource, img_sizes: Sequence[int | None] = (None,)) -> None:
    """Refuse an archived run that holds no usable predictions for ``source`` at one of ``img_sizes``, before any
    run is evaluated (minutes on a CPU) only for the comparison to stop at the archived one."""
    source = source.resolved()
    for run in runs:
        record = read_archive(run)
        for size in img_sizes if record is not None else ():
            eval_dir = predictions_dir(run, record, source.at_size(size))
            why = archived_stale(record, eval_dir, data=source.data, manifest=source.manifest, split=source.split)
            if why is not None:
                raise ValueError(_archived_refusal(Path(run), why))


def stale_predictions(eval_dir: Path, run: Path, source: EvalSource) -> str | None:
    """Why the predictions in ``eval_dir`` cannot stand for evaluating ``run`` on ``source`` (its split resolved), or
    None when they can.

    The folder's name (:meth:`EvalSource.tag`) keeps only the last part of a source's path, and says nothing of the
    weights, so another source or a retrained run can map to the same folder: ``metrics.json`` decides. Two manifests
    with the same bytes, or the same fingerprint (the same split of the data stored in another folder,
    :func:`popevit.data.manifest.same_images`), are the same source. Records written before ``metrics.json`` held the
    weights' hash are checked by modification time instead. An archived run (:mod:`popevit.evaluation.archive`) is
    judged by its ``archive.json``.
    """
    preds, metrics = eval_dir / PREDICTIONS, eval_dir / METRICS
    archived = read_archive(run)
    if archived is not None:
        return archived_stale(archived, eval_dir, data=source.data, manifest=source.manifest, split=source.split)
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
    made = record.get("source", {})
    made_on = made.get("resolved") or str(Path(made.get("data") or made.get("manifest") or "").resolve())
    wanted = source.location(run)
    files = Path(made_on).is_file() and Path(wanted).is_file()
    if made_on != wanted and not (files and same_images(made_on, wanted)):  # a copied run, a moved dataset
        return f"they were made on {made_on}, not {wanted}"
    if made.get("split") != source.split:
        return f"they were made on split {made.get('split')!r}, not {source.split!r}"
    if made.get("source") != source.source_name:
        return f"they were made on source {made.get('source')!r}, not {source.source_name!r}"
    made_rules = record.get("label_map", {}).get("rules", [])
    wanted_rules = ["|".join(pats) + "=" + target for pats, target in parse_label_map(source.label_map)]
    if made_rules != wanted_rules:
        return f"they were made with label map {made_rules or 'none'}, not {wanted_rules or 'none'}"
    return None
