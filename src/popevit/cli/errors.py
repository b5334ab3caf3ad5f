"""How a command fails: one ``error:`` line on stderr that names the file or option, the problem and the fix.

Every command runs inside :class:`ErrorHandlingGroup` (the ``popevit`` app's command group), which turns whatever a
command raises into that line and an exit code:

- 2: usage or input errors: a wrong option, a missing or damaged file, a folder that cannot be used
  (``ValueError``, ``FileNotFoundError``, ``PermissionError``, YAML and JSON syntax errors, an undecodable image,
  damaged weights, ...);
- 1: runtime errors: a full disk, an I/O error, CUDA or torch failures, out of memory, or a bug in popevit (said so);
- 130: Ctrl-C; 143: SIGTERM (``popevit train`` first says how to resume).

``--debug`` (``popevit --debug COMMAND ...``) or ``POPEVIT_DEBUG=1`` shows the traceback instead.
:func:`user_errors` does the same for a block of one command, so a command also fails well when it is mounted in
another Typer app.

The error classes of yaml, safetensors, the data layer and training are imported where an error is translated: the
data and training layers pull in torch, a heavy import kept out of ``popevit --help``.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

DEBUG_ENV = "POPEVIT_DEBUG"
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError)
# OSError numbers that are the machine's problem, not the user's input: exit 1.
_RUNTIME_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EFBIG,
    errno.EIO,
    errno.ENOMEM,
    errno.EROFS,
    errno.EMFILE,
    errno.ENFILE,
}

_debug = [False]
# How Typer and click end a command on purpose (an exit code, an abort, a usage error): never reported again.
# (Typer vendors its own click: its usage errors are TyperExceptions.)
_PASS_THROUGH = (typer.Exit, typer.Abort, TyperException)


def debug_enabled() -> bool:
    """Whether tracebacks are wanted: ``--debug`` was given or ``POPEVIT_DEBUG`` is set (and not ``0``)."""
    return _debug[0] or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def set_debug(value: bool) -> None:
    _debug[0] = bool(value)


class Terminated(BaseException):
    """The process received SIGTERM outside training (training handles it itself and says how to resume).

    A ``BaseException``, as ``KeyboardInterrupt``: the ``except Exception`` that turns a hostile image into a skip
    reason must not turn the signal into one."""

    exit_code = 128 + signal.SIGTERM


def _input_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input (exit 2); imported lazily so ``popevit --help`` stays fast."""
    import yaml

    kinds: list[type[BaseException]] = [
        ValueError,  # includes ConfigError, json/Unicode decode errors, pydantic's ValidationError
        FileNotFoundError,
        FileExistsError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
        yaml.YAMLError,
    ]
    try:
        from safetensors import SafetensorError

        kinds.append(SafetensorError)
    except ImportError:  # pragma: no cover - safetensors is a dependency
        pass
    from popevit.data.decode import DecodeError

    kinds.append(DecodeError)
    try:
        from popevit.training.rundir import RunDirError

        kinds.append(RunDirError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(kinds)


def exit_code(err: BaseException) -> int:
    """The exit code for ``err``: its own ``exit_code`` attribute, 130 for Ctrl-C, 2 for input errors, else 1."""
    own = getattr(err, "exit_code", None)
    if isinstance(own, int) and not isinstance(err, _PASS_THROUGH):
        return own
    if isinstance(err, KeyboardInterrupt):
        return 130
    if isinstance(err, OSError) and err.errno in _RUNTIME_ERRNOS:
        return 1
    if isinstance(err, _input_error_types()):
        return 2
    return 1


def message(err: BaseException, code: int | None = None) -> str:
    """The ``error:`` text of ``err``: the library's message, with the file of an ``OSError`` in front."""
    from popevit.io import shown

    if isinstance(err, KeyboardInterrupt):
        return "interrupted (Ctrl-C); files popevit was writing are left as they were before"
    if isinstance(err, OSError) and err.filename is not None:  # e.g. "out/m.csv: No space left on device"
        text = f"{shown(err.filename)}: {err.strerror or err}"
        if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            text += " (free disk space or write elsewhere; the files there are unchanged)"
        return text
    if isinstance(err, KeyError) and len(err.args) == 1 and isinstance(err.args[0], str) and " " in err.args[0]:
        text = err.args[0]  # KeyError's str() quotes its message
    else:
        text = str(err) or type(err).__name__
    code = exit_code(err) if code is None else code
    if code == 1 and not isinstance(err, OSError | RuntimeError | MemoryError | Terminated):
        # Neither an input problem nor the machine's: a bug. Say so, and how to see where.
        text = (
            f"internal error ({type(err).__name__}: {text}); this is a bug in popevit: please report it with "
            f"the output of the same command run with --debug"
        )
    return text.encode("utf-8", "backslashreplace").decode("utf-8")  # never fail to print a name


def fail(err: BaseException, code: int | None = None) -> NoReturn:
    """Print ``err`` as one ``error:`` line on stderr and exit with ``code`` (default :func:`exit_code`); under
    ``--debug`` re-raise it instead."""
    if debug_enabled():
        raise err
    prefix = "" if isinstance(err, Terminated | KeyboardInterrupt) or getattr(err, "plain", False) else "error: "
    code = exit_code(err) if code is None else code
    typer.echo(f"{prefix}{message(err, code)}", err=True)
    raise typer.Exit(code) from None


@contextmanager
def user_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Turn exceptions raised inside into one ``error:`` line and an exit code.

    ``ValueError``, ``FileNotFoundError`` and the types in ``extra`` are the block's expected input errors (exit 2;
    an ``OSError`` of the machine such as a full disk still exits 1); anything else gets :func:`exit_code`.
    """
    try:
        yield
    except _PASS_THROUGH:
        raise
    except (*USER_ERRORS, *extra) as err:
        fail(err, 1 if isinstance(err, OSError) and err.errno in _RUNTIME_ERRNOS else 2)
    except (Exception, KeyboardInterrupt, Terminated) as err:
        fail(err)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(
        f"stopped by {signal.Signals(signum).name}; files popevit was writing are left as they were before"
    )


class ErrorHandlingGroup(TyperGroup):
    """The ``popevit`` command group: every command's exceptions, Ctrl-C and SIGTERM end in one line (see above)."""

    def invoke(self, ctx: typer.Context) -> Any:
        set_debug(False)  # the root callback sets it again when --debug is given
        previous = signal.getsignal(signal.SIGTERM)
        if previous in (signal.SIG_DFL, None) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return super().invoke(ctx)
        except _PASS_THROUGH:
            raise
        except (Exception, KeyboardInterrupt, Terminated) as err:
            fail(err)
        finally:
            set_debug(False)
            if signal.getsignal(signal.SIGTERM) is _raise_terminated:
                signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)
