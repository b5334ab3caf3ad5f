"""``popevit archive``: keep what the paired tests need from a run, without its weights.

A run folder's weights and checkpoints are too large to commit, and a fresh checkout has no ``runs/``; yet a paired
test needs every run's per-image predictions on the same images, so an experiment series that spans several machines
or checkouts loses its comparisons with its run folders. An archived run is a small folder that ``popevit compare`` and
``popevit study`` read like a run:

    NAME/
      archive.json        where it came from, the weights' sha256 and parameter count, the training images, the run
                          manifest's sha256 and fingerprint, and the same two of the manifest each evaluation was
                          made on
      model.json run.json config.yaml val_metrics.json logs/csv/metrics.csv
      eval/<tag>/predictions.csv, metrics.json   every evaluation of the run (no plots)

Its predictions are used as they are: only for the evaluations it holds (by tag: ``test``, ``test-192px``), and only
when the manifest they were made on has the content of the one asked for: the same bytes, or the same images, labels
and splits stored under another folder (:meth:`popevit.data.manifest.Manifest.fingerprint`), so that archives
committed on one machine pair with runs made on another. Anything that would need the model again, such as another
input size or another source, is refused with the reason.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from popevit.artifact import ARCHIVE, META, WEIGHTS, file_sha256, param_count
from popevit.data.manifest import read_manifest
from popevit.evaluation.evaluate import EVAL_DIR, METRICS
from popevit.evaluation.predictions import PREDICTIONS
from popevit.io import read_json

FORMAT = "popevit-archive/1"
# copied when there (model.json is required): the run's facts and config, and what `popevit report` shows of training
RECORDS = ("run.json", "config.yaml", "val_metrics.json", "logs/csv/metrics.csv")


def train_images(manifest: Path) -> int:
    """Rows of a manifest CSV in its ``train`` split."""
    with open(manifest, newline="", encoding="utf-8-sig") as fh:
        return sum(row["split"] == "train" for row in csv.DictReader(fh))


def read_archive(run: str | Path) -> dict[str, Any] | None:
    """The ``archive.json`` of an archived run, or None for a run folder that has its weights."""
    path = Path(run) / ARCHIVE
    if (Path(run) / WEIGHTS).is_file() or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}): delete {run} and archive the original run again") from None
    if record.get("format") != FORMAT:
        raise ValueError(
            f"{path} has format {record.get('format')!r}, not {FORMAT!r}: delete {run} and archive the original run "
            "again"
        )
    return record


def _evaluation(run: Path, eval_dir: Path, weights_sha: str) -> dict[str, Any]:
    """The archive's record of one evaluation, after checking that its predictions are those of the current weights
    and that the manifest they were made on is still there to be hashed."""
    record = read_json(eval_dir / METRICS, "metrics.json of an evaluation")
    recorded = record.get("model", {}).get("weights_sha256")
    if recorded is None:
        if (run / WEIGHTS).stat().st_mtime > (eval_dir / PREDICTIONS).stat().st_mtime:
            raise ValueError(f"{eval_dir} is older than {run / WEIGHTS}: re-run `popevit evaluate` before archiving")
    elif recorded != weights_sha:
        raise ValueError(
            f"{eval_dir} holds predictions of other weights than {run / WEIGHTS}: re-run `popevit evaluate` "
            "before archiving"
        )
    source = record.get("source", {})
    entry: dict[str, Any] = {"split": source.get("split"), "img_size": record.get("img_size")}
    if "data" in source:  # an image folder has no single hash: kept, but never matched to a source again
        entry["source_sha256"] = None
        entry["source"] = f"image folder {source['data']}"
        return entry
    made_on = Path(source.get("resolved") or source.get("manifest") or "")
    if not made_on.is_file():
        raise FileNotFoundError(
            f"{eval_dir} was made on {str(made_on)!r}, which is gone, so the archive could not say which images it "
            f"covers: re-run `popevit evaluate {run}` on a manifest that exists, or delete {eval_dir}"
        )
    manifest = read_manifest(made_on)
    entry["source_sha256"] = manifest.sha256
    entry["source_fingerprint"] = manifest.fingerprint()
    entry["source"] = f"manifest {made_on.name} (sha256 {entry['source_sha256'][:12]})"
    return entry


def archive_run(run: str | Path, out: str | Path) -> Path:
    """Write the archived copy of ``run`` to ``out/<run name>``; returns that folder.

    Refuses a run with no weights or no evaluation, and predictions that are not those of the current weights. An
    existing archive of the same weights is replaced (to add evaluations made since); one of other weights is not.
    The copy is written beside its destination and renamed into place, so an interrupted archive leaves nothing.
    """
    run, out = Path(run), Path(out)
    weights = run / WEIGHTS
    if not weights.is_file() or not (run / META).is_file():
        what = "an archived run already" if (run / ARCHIVE).is_file() else "not a finished popevit run"
        raise FileNotFoundError(f"{str(weights)!r} not found: {str(run)!r} is {what}")
    evals = sorted(d for d in (run / EVAL_DIR).glob("*") if (d / PREDICTIONS).is_file() and (d / METRICS).is_file())
    if not evals:
        raise ValueError(f"{run} has no evaluation to archive: run `popevit evaluate {run}` first")
    weights_sha = file_sha256(weights)
    manifest = read_manifest(run / "manifest.csv") if (run / "manifest.csv").is_file() else None
    record = {
        "format": FORMAT,
        "archived_from": str(run.resolve()),
        "weights_sha256": weights_sha,
        "params": param_count(weights),
        "train_images": len(manifest.select("train")) if manifest is not None else None,
        "manifest_sha256": manifest.sha256 if manifest is not None else None,
        "manifest_fingerprint": manifest.fingerprint() if manifest is not None else None,
        "evaluations": {d.name: _evaluation(run, d, weights_sha) for d in evals},
    }
    dest = out / run.name
    old = read_archive(dest) if dest.is_dir() else None
    if dest.exists() and (old is None or old["weights_sha256"] != weights_sha):
        raise FileExistsError(
            f"{dest} exists and is not an archive of {weights}: choose another --out, or delete it if it is stale"
        )
    dropped = sorted(set(old["evaluations"]) - set(record["evaluations"])) if old is not None else []
    if dropped:
        raise ValueError(
            f"{dest} holds evaluations that {run} no longer has ({', '.join(dropped)}); evaluate them again in the "
            "run, or delete the archive to archive only what the run holds now"
        )
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{run.name}.", dir=out))
    backup = out / f".{run.name}.replaced"
    try:
        for name in (META, *RECORDS):
            if (run / name).is_file():
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(run / name, tmp / name)
        for d in evals:
            (tmp / EVAL_DIR / d.name).mkdir(parents=True)
            for name in (PREDICTIONS, METRICS):
                shutil.copy2(d / name, tmp / EVAL_DIR / d.name / name)
        (tmp / ARCHIVE).write_text(json.dumps(record, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp's 0700 would keep the archive from other readers of a shared folder
        if dest.exists():  # the old archive stays whole until the new one is in place
            if backup.exists():
                shutil.rmtree(backup)
            os.replace(dest, backup)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
        if backup.exists() and dest.exists():
            shutil.rmtree(backup)
    return dest


def archived_stale(
    record: dict[str, Any], eval_dir: Path, *, data: str | Path | None, manifest: str | Path | None, split: str | None
) -> str | None:
    """Why an archived run's predictions in ``eval_dir`` cannot stand for this source, or None when they can."""
    held = record["evaluations"]
    entry = held.get(eval_dir.name)
    if entry is None:
        return f"it holds no evaluation {eval_dir.name!r}, only {sorted(held)}"
    missing = [name for name in (PREDICTIONS, METRICS) if not (eval_dir / name).is_file()]
    if missing:
        return (
            f"the archive is incomplete ({eval_dir.name}/{' and '.join(missing)} missing): archive the original run "
            "again"
        )
    if data is not None:
        return f"an image folder ({data}) cannot be matched to archived predictions by content"
    if manifest is not None:
        want_sha, want_fingerprint = file_sha256(manifest), read_manifest(manifest).fingerprint()
    else:
        want_sha, want_fingerprint = record["manifest_sha256"], record.get("manifest_fingerprint")
    same_bytes = entry["source_sha256"] is not None and entry["source_sha256"] == want_sha
    same_images = want_fingerprint is not None and entry.get("source_fingerprint") == want_fingerprint
    if not (same_bytes or same_images):
        what = f"manifest {manifest}" if manifest is not None else "the run's own manifest"
        return f"{eval_dir.name!r} was made on {entry.get('source', 'another manifest')}, not on {what}"
    if entry["split"] != split:
        return f"{eval_dir.name!r} was made on split {entry['split']!r}, not {split!r}"
    return None
