"""How a command reports a user's mistake: one line on stderr that names the problem and the fix, exit code 2."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError)


@contextmanager
def user_errors(*extra: type[Exception]) -> Iterator[None]:
    """Turn ``ValueError``, ``FileNotFoundError`` and ``extra`` raised inside into ``error: ...`` and exit 2.

    The library raises these for bad input (a missing run, a wrong split name, runs evaluated on different images)
    with a message that already says what to do; a traceback would only hide it. ``extra=(OSError,)`` also covers
    unusable paths (an unwritable ``--out``, a full disk), shown as ``path: reason``.
    """
    try:
        yield
    except (*USER_ERRORS, *extra) as err:
        if isinstance(err, OSError) and err.filename is not None:  # e.g. "error: out/m.csv: Permission denied"
            typer.echo(f"error: {err.filename}: {err.strerror or err}", err=True)
        else:
            typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
