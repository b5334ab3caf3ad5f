"""Small torch-free helpers for what serving writes: strict JSON and atomic file writes."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars made Python and NaN/inf floats made None, so the JSON is strict."""
    if hasattr(obj, "item") and not isinstance(obj, (list, tuple, dict, str)) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write(path: Path, write: Callable[[str], None]) -> Path:
    """Write through a temporary file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name keeps the suffix: torch.export.save checks it
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    """Atomically write ``text`` (UTF-8)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: Path, obj: Any) -> Path:
    """Atomically write strict, indented JSON."""
    return write_text(path, json.dumps(jsonable(obj), indent=2, allow_nan=False) + "\n")
