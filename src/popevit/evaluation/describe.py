"""Short human names for what an evaluation is about: the model and the data it was evaluated on.

Figures, reports and the demo name a model as ``vit_p8_w64_d4_conv + pope (res stem)`` and data as ``test split of
runs/x/manifest.csv`` or ``Br35H (external)``, from what ``model.json`` and ``metrics.json`` record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def model_label(name: str | None, kwargs: dict[str, Any] | None = None) -> str:
    """``"vit_p8_w64_d4_conv + pope (res stem, fc_norm)"`` from a registered model name and its keyword arguments.

    Args:
        name: registered model name (``model.json``'s ``name``).
        kwargs: its keyword arguments; ``pos_enc``, a non-default ``stem`` and ``fc_norm`` are named.

    Returns:
        The label; ``"model"`` when the name is unknown.
    """
    kwargs = kwargs or {}
    label = str(name or "model")
    if kwargs.get("pos_enc"):
        label += f" + {kwargs['pos_enc']}"
    extras = [f"{kwargs['stem']} stem"] if kwargs.get("stem") and kwargs["stem"] != "patch" else []
    extras += ["fc_norm"] if kwargs.get("fc_norm") else []
    return f"{label} ({', '.join(extras)})" if extras else label


def source_label(source: dict[str, Any] | None) -> str:
    """``"test split of phantoms"``, ``"folder Testing"`` or ``"Br35H (external)"`` from ``metrics.json``'s
    ``source`` record.

    Args:
        source: the ``source`` record (keys ``name``, ``external``, ``data``, ``manifest``, ``split``).

    Returns:
        The label; ``""`` when nothing is recorded.
    """
    source = source or {}
    split = source.get("split")
    if source.get("name"):
        where = str(source["name"])
        where = f"{split} split of {where}" if split and not source.get("external") else where
    elif source.get("manifest"):
        where = Path(str(source["manifest"])).name
        where = f"{split} split of {where}" if split else where
    elif source.get("data"):
        where = f"folder {Path(str(source['data'])).name}" + (f" ({split})" if split else "")
    else:
        return ""
    return where + (" (external)" if source.get("external") else "")
