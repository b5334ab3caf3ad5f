"""Budget accounting of multi-stage recipes: a run states the compute of the stages it was built on.

A distilled student's teacher and a fine-tune's pretraining (``--init``) cost compute that a fair comparison charges
to the run. :func:`upstream_stages` follows the records beside their weights (``run.json``, ``pretrain.json``)
back through every stage; :func:`budget` gives the ``upstream`` and ``budget_wall_s`` entries of ``run.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from popevit.io import read_json

STAGE_RECORDS = ("run.json", "pretrain.json")  # what popevit train and popevit pretrain write beside their weights


def upstream_stages(teacher: Path | None, init: Path | None) -> list[dict[str, Any]]:
    """The training stages a run is built on, with their compute, so that a two-stage recipe states its whole budget
    (a distilled student's teacher and a fine-tune's pretraining count against it).

    One record per stage: its role (``teacher``, ``init``), folder, wall time, epochs, images seen and device, read
    from the ``run.json`` or ``pretrain.json`` beside it; then the stages that stage was itself built on. A stage
    with no such record (weights from elsewhere) has ``wall_s`` None: its compute is unknown, not zero.
    """
    stages: list[dict[str, Any]] = []
    for role, folder in (("teacher", teacher), ("init", None if init is None else Path(init).parent)):
        if folder is None:
            continue
        record = next((folder / n for n in STAGE_RECORDS if (folder / n).is_file()), None)
        info = read_json(record, "record of a run") if record is not None else {}
        stages.append(
            {
                "role": role,
                "path": str(folder),
                "record": None if record is None else record.name,
                **{k: info.get(k) for k in ("wall_s", "epochs", "images_seen", "device")},
            }
        )
        stages += info.get("upstream", [])
    return stages


def stages_wall_s(stages: list[dict[str, Any]]) -> float | None:
    """Wall time of the stages a run was built on (:func:`upstream_stages`); None when one's compute is unknown."""
    if any(s["wall_s"] is None for s in stages):
        return None
    return sum(s["wall_s"] for s in stages)


def budget(wall_s: float, teacher: Path | None, init: Path | None) -> dict[str, Any]:
    """The budget entries of ``run.json``: the upstream stages, and the whole wall time (this run's ``wall_s`` plus
    theirs; None when a stage's compute is unknown)."""
    stages = upstream_stages(teacher, init)
    up = stages_wall_s(stages)
    return {"upstream": stages, "budget_wall_s": None if up is None else round(wall_s + up, 2)}
