"""Where a run's images are: ``--data`` / ``--manifest`` on the command line, else ``$POPEVIT_DATA``.

Experiment configs describe an experiment, not a machine, so they name no data folder; the folder is given when a
command runs. A run that names none stops with :data:`NO_DATA` instead of training on whatever a path in a config
happens to hold.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from popevit.config import ExperimentConfig

DATA_ENV = "POPEVIT_DATA"
NO_DATA = (
    "no data given: pass --data /path/to/Training (the Kaggle Brain Tumor MRI folder) or --manifest FILE (from "
    f"`popevit data split`), or set it once with `export {DATA_ENV}=/path/to/Training`"
)


def data_overrides(cfg: ExperimentConfig, environ: Mapping[str, str] | None = None) -> list[str]:
    """The overrides that point ``cfg`` at its images: none when it names them, else ``data.data=$POPEVIT_DATA``.

    Args:
        cfg: the config with the command line's ``--data``/``--manifest``/``--set`` already applied.
        environ: environment to read ``POPEVIT_DATA`` from (default ``os.environ``).

    Returns:
        ``[]`` or ``["data.data=<folder>"]``.

    Raises:
        ValueError: an image-folder experiment with no data and no ``POPEVIT_DATA`` (message: :data:`NO_DATA`).
    """
    d = cfg.data
    if d.dataset != "folder" or d.data is not None or d.manifest is not None:
        return []  # CIFAR downloads into its own cache; an explicit folder or manifest wins
    folder = (os.environ if environ is None else environ).get(DATA_ENV, "").strip()
    if not folder:
        raise ValueError(NO_DATA)
    if not os.path.isdir(folder):
        raise ValueError(
            f"{DATA_ENV}={folder!r} is not a folder; point it at the Kaggle Training folder or pass --data"
        )
    return [f"data.data={json.dumps(folder)}"]
