"""Resume and training history: the curves of a resumed run survive Lightning's CSV logger.

Lightning's ``CSVLogger`` deletes ``logs/csv/metrics.csv`` when it finds the file on resume. Before a resumed fit,
:func:`keep_metrics_history` keeps the rows logged up to the checkpoint it resumes from; after it,
:func:`restore_metrics_history` puts them back in front of the new ones, so that a run resumed any number of times
has one unbroken history, and the epochs an interrupted process logged after its last checkpoint appear once.
"""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from popevit.io import atomic_write_bytes

METRICS_CSV = Path("logs") / "csv" / "metrics.csv"


def keep_metrics_history(out_dir: Path, last: Path) -> Path | None:
    """Before a resumed fit: copy the rows of ``logs/csv/metrics.csv`` logged before the step of ``last`` (the
    checkpoint it resumes from) to a side file, because Lightning's CSVLogger deletes the file when it finds it on
    resume (its warning "Previous log files in this directory will be deleted"). Rows that an interrupted process
    logged after its last checkpoint are dropped: those epochs run again. A side file left by an earlier interrupted
    resume is carried over.

    Returns:
        The side file, for :func:`restore_metrics_history` after the fit; None when there is no history.
    """
    side = out_dir / METRICS_CSV.with_name("metrics.before_resume.csv")
    ckpt = torch.load(last, map_location="cpu", weights_only=True, mmap=True)
    rows = [*_read_csv_rows(side), *_read_csv_rows(out_dir / METRICS_CSV)]
    rows = [r for r in rows if r.get("step") and int(float(r["step"])) < ckpt["global_step"]]
    if not rows:
        return None
    _write_csv_rows(side, rows)
    return side


def restore_metrics_history(out_dir: Path, side: Path) -> None:
    """After a resumed fit: put the rows :func:`keep_metrics_history` kept back in front of the new ones."""
    _write_csv_rows(out_dir / METRICS_CSV, [*_read_csv_rows(side), *_read_csv_rows(out_dir / METRICS_CSV)])
    side.unlink()


def _read_csv_rows(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_csv_rows(path: Path, rows: list[dict[str, str]]) -> None:
    header = sorted(set().union(*rows))  # Lightning's CSVLogger sorts its columns too

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write_bytes(path, write)
