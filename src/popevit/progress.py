"""What a long command shows while it works: rich progress bars on a terminal, nothing in logs, no third-party noise.

- :func:`track` wraps any loop that can take more than a few seconds (fingerprinting a folder, predicting a test
  set, explaining images, evaluating the runs of a study, the trials of a sweep). The bar goes to stderr and only
  when stderr is a terminal, so redirected output and CI logs stay clean; ``POPEVIT_PROGRESS=0`` turns bars off and
  ``POPEVIT_PROGRESS=1`` forces them. Nested loops share one live display (a second line), as rich allows only one.
- :func:`quiet_third_party` is installed once when the ``popevit`` command starts (and by the demo). It drops the
  banners and advertisements that Lightning logs on every ``Trainer`` ("GPU available: ...", "TPU available: ...",
  "💡 Tip: ... litlogger/litmodels", "Loading `train_dataloader` to estimate ...") with a logging filter on the two
  loggers that emit them, and ignores one FutureWarning that torch raises inside Lightning's own code
  (``isinstance(treespec, LeafSpec)``). Each filter matches one message of one library; warnings from popevit are
  untouched.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sized
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

PROGRESS_ENV = "POPEVIT_PROGRESS"

# Lightning's info-level banners and tips (lightning.pytorch.trainer.setup, .connectors.*): one pattern each.
LIGHTNING_NOISE = (
    r"^GPU available: ",
    r"^TPU available: ",
    r"^HPU available: ",
    r"^💡 Tip: ",
    r"^Loading `(train|val|test|predict)_dataloader` to estimate number of stepping batches",
    r"^`Trainer\.fit` stopped: `max_epochs=\d+` reached\.$",  # the planned end; a time cap or a signal still shows
    r"^LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES: ",
)
LIGHTNING_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
)
# torch 2.14 deprecates LeafSpec; Lightning 2.6's lightning/pytorch/utilities/_pytree.py still uses it on every fit.
TORCH_PYTREE_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


class _DropMatching(logging.Filter):
    """Drop records whose message matches one of ``patterns``."""

    def __init__(self, patterns: Iterable[str]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(f"(?:{p})" for p in patterns))

    def filter(self, record: logging.LogRecord) -> bool:
        return self.pattern.search(record.getMessage()) is None


_FILTER = _DropMatching(LIGHTNING_NOISE)


def quiet_third_party() -> None:
    """Silence Lightning's banners and tips and torch's ``LeafSpec`` deprecation inside Lightning (idempotent).

    The loggers are configured by name, so Lightning need not be imported yet (the CLI stays fast to start).
    """
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    warnings.filterwarnings("ignore", message=TORCH_PYTREE_WARNING, category=FutureWarning)


def _forced() -> bool | None:
    env = os.environ.get(PROGRESS_ENV, "").strip().lower()
    return None if not env else env not in ("0", "false", "no", "off")


def enabled() -> bool:
    """Whether bars are drawn: ``POPEVIT_PROGRESS`` if set (``0``/``1``), else whether stderr is a terminal."""
    forced = _forced()
    if forced is not None:
        return forced
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


_LIVE: list[Any] = []  # the one rich Progress on screen, shared by nested loops


def active() -> bool:
    """True while a popevit bar is on screen (a training run inside a sweep then leaves out Lightning's own bar)."""
    return bool(_LIVE)


@contextmanager
def _display() -> Iterator[Any]:
    if _LIVE:
        yield _LIVE[0]
        return
    from rich.console import Console  # rich is a heavy import, made only when a bar is shown
    from rich.progress import (  # heavy, as above
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(stderr=True, force_terminal=_forced() or None),
        transient=True,
    )
    with bar:
        _LIVE.append(bar)
        try:
            yield bar
        finally:
            _LIVE.pop()


def track(iterable: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield from ``iterable`` while a bar on stderr counts the items (nothing is drawn unless :func:`enabled`).

    Args:
        iterable: the loop's items.
        description: what is being done, e.g. ``"fingerprinting 5712 images"``.
        total: number of items; default ``len(iterable)`` when it has one.

    Yields:
        The items of ``iterable``, unchanged.
    """
    if not enabled():
        yield from iterable
        return
    if total is None and isinstance(iterable, Sized):
        total = len(iterable)
    with _display() as bar:
        task = bar.add_task(description, total=total)
        try:
            for item in iterable:
                yield item
                bar.advance(task)
        finally:
            bar.remove_task(task)


@contextmanager
def bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A bar that the caller moves, for loops whose iterations are not the counted units (a sweep's trials).

    Args:
        description: what is being done.
        total: units to do, or None when unknown.

    Yields:
        ``done(n)``: set the number of finished units.
    """
    if not enabled():
        yield lambda n: None
        return
    with _display() as live:
        task = live.add_task(description, total=total)
        try:
            yield lambda n: live.update(task, completed=n)
        finally:
            live.remove_task(task)
