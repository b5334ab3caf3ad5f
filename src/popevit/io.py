"""The files popevit writes itself go through :func:`atomic_write`; JSON records it reads, through :func:`read_json`.

(Lightning appends its own logs and TensorBoard events; the decode and fingerprint caches, which are rebuilt when a
file is unreadable, write through their own temporary files.)

A write goes to a temporary file in the target's own folder, is flushed to disk (``fsync``) and then renamed over the
target (``os.replace``, atomic on POSIX and Windows). A crash, a full disk, a kill or an encoding error mid-write
therefore leaves either the old file or the new one, never half of one, and never destroys a good file.

File names that are not valid UTF-8 (possible on Linux) reach Python as strings with lone surrogates (PEP 383,
``surrogateescape``); text written here keeps them as the original bytes, so a manifest listing such a file reads
back to the same path. :func:`shown` makes such a name printable.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

# The process umask, read once: mkstemp makes 0600 files, and a rewritten manifest or model should keep the
# permissions a plain open() would have given it (0644 under the usual umask), so that others can still read it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def shown(path: str | Path) -> str:
    """``path`` as printable text: bytes of a name that are not UTF-8 appear as ``\\xNN`` escapes."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def atomic_write(path: str | Path, write: Callable[[Path], Any], keep_suffix: bool = False) -> Path:
    """Write a file through a temporary file in the same folder, fsync it, then rename it over ``path``.

    Args:
        path: destination. Its folder is created when missing.
        write: callable that writes the whole content to the temporary path it is given (e.g.
            ``lambda tmp: fig.savefig(tmp, format="png")``). Anything it raises propagates, and the destination is
            left as it was.
        keep_suffix: end the temporary name with ``path``'s suffix too, for writers that check it
            (``torch.export.save`` wants ``.pt2``).

    Returns:
        ``path``.

    Raises:
        IsADirectoryError: ``path`` is a folder.
        OSError: the folder cannot be created or written (permissions, full disk); the destination is unchanged.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(21, "is a folder, not a file; pass a file path", str(path))
    for parent in map(str, path.parents):  # the first one that exists must be a folder
        if os.path.exists(parent):
            if not os.path.isdir(parent):
                raise NotADirectoryError(20, f"is a file, so it cannot hold {path.name}; pass another path", parent)
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = f".tmp{path.suffix}" if keep_suffix else ".tmp"
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        try:
            write(tmp)
        except OSError as err:
            if err.filename is None:  # a failed write() names no file: name the one being written
                raise OSError(err.errno, err.strerror or str(err), str(path)) from err
            raise
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        try:
            mode = path.stat().st_mode & 0o7777
        except OSError:
            mode = 0o666 & ~_UMASK
        with contextlib.suppress(OSError):
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes | Callable[[Path], Any]) -> Path:
    """Write ``data`` (bytes, or a writer callable as in :func:`atomic_write`) atomically to ``path``."""
    if callable(data):
        return atomic_write(path, data)
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` atomically; names that are not UTF-8 (lone surrogates) are written as their original bytes."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(text.encode(encoding, "surrogateescape")))


def atomic_write_csv(path: str | Path, rows: Iterable[Sequence[Any]], lineterminator: str = "\r\n") -> Path:
    """Write rows as UTF-8 CSV atomically (the csv module's line ends unless given); the first row is the header."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator=lineterminator).writerows(rows)
    return atomic_write_text(path, buf.getvalue())


def jsonable(obj: Any) -> Any:
    """``obj`` made strict JSON: NaN/inf floats become None, numpy scalars Python numbers, paths and keys strings."""
    if hasattr(obj, "item") and not isinstance(obj, list | tuple | dict | str) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2, **kwargs: Any) -> Path:
    """Write ``obj`` as JSON atomically (a trailing newline; ``kwargs`` go to :func:`json.dumps`)."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, **kwargs) + "\n")


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as strict, indented JSON atomically (NaN/inf as null: :func:`jsonable`)."""
    return atomic_write_json(path, jsonable(obj), allow_nan=False)


def atomic_savefig(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    """``fig.savefig(path, **kwargs)`` through :func:`atomic_write` (the format follows the extension)."""
    path = Path(path)
    kwargs.setdefault("format", path.suffix[1:].lower() or "png")
    return atomic_write(path, lambda tmp: fig.savefig(tmp, **kwargs))


def read_json(path: str | Path, what: str = "file") -> Any:
    """Parse a JSON file, with errors that name it.

    Args:
        path: the file.
        what: what the file is, for the message (e.g. ``"model.json of a run"``).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: it is not valid UTF-8 JSON (truncated, edited by hand, damaged).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(2, f"{what} not found", str(path)) from None
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{shown(path)}: {what} is not UTF-8 text (byte {err.start}); it is damaged") from None
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{shown(path)}: {what} is not valid JSON ({err.msg} at line {err.lineno}, column {err.colno}); it is "
            "damaged or was edited by hand: restore it, or recreate it with the popevit command that wrote it"
        ) from None
