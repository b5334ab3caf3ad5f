"""Train several small runs at once, each in its own process with its own torch threads, with one bar per run.

A small model's training step is mostly per-operation overhead, which more threads hardly shrink: on 2 cores a
step of the demo's PoPE-ViT takes 91 ms with 2 threads and 109 ms with 1 thread while a second run trains beside it,
so two 1-thread runs side by side finish both in about the time of one (docs/experiments/demo_recipe.md).

Processes are started with ``spawn`` (a forked child of a process that has started OpenMP threads can hang), so each
one imports popevit afresh; every run stays seeded and reproducible, since its thread count is its config's
``train.threads``. As with any ``spawn`` multiprocessing, a script that calls :func:`train_side_by_side` (or
:func:`popevit.demo.run_demo`) needs the ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import queue as queue_mod
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from popevit import progress
from popevit.config import ExperimentConfig
from popevit.progress import PROGRESS_ENV, quiet_third_party

_POLL_S = 0.5


def _worker(name: str, cfg: ExperimentConfig, run_dir: Path, events: Any) -> None:
    """Train one run in a child process; report each finished epoch and the end (or the error) to ``events``."""
    from lightning.pytorch.callbacks import Callback  # heavy import: Lightning

    from popevit.training import train  # heavy import: Lightning

    class _Epochs(Callback):
        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            events.put((name, "epoch", trainer.current_epoch + 1))

    quiet_third_party()
    logging.getLogger("popevit").setLevel(logging.WARNING)
    os.environ[PROGRESS_ENV] = "0"  # the parent draws this run's bar; no second live display on the same terminal
    try:
        result = train(cfg, run_dir, callbacks=[_Epochs()])
    except BaseException as err:  # the parent names the run and the error in one line, and stops the others
        events.put((name, "error", f"{type(err).__name__}: {err}"))
        sys.exit(1)
    events.put((name, "done", float(result.wall_s)))


def train_side_by_side(jobs: dict[str, tuple[ExperimentConfig, Path]], workers: int | None = None) -> dict[str, float]:
    """Train each ``name: (config, run_dir)`` of ``jobs`` in a child process, ``workers`` at a time.

    Args:
        jobs: the runs to make; each config's ``train.threads`` sets its torch threads, ``train.max_epochs`` the
            length of its bar.
        workers: processes at once; default the number of CPU cores (at least 1).

    Returns:
        Each run's training wall time in seconds.

    Raises:
        RuntimeError: a run failed (its error is named) or its process died; the other runs are stopped.
    """
    decode_once([cfg for cfg, _ in jobs.values()])
    ctx = mp.get_context("spawn")
    events = ctx.Queue()
    pending, running, walls = list(jobs), {}, {}
    limit = max(1, workers or os.cpu_count() or 1)
    with ExitStack() as stack:
        bars = {
            n: stack.enter_context(progress.bar(f"train {n}", cfg.train.max_epochs)) for n, (cfg, _) in jobs.items()
        }
        try:
            while pending or running:
                while pending and len(running) < limit:
                    name = pending.pop(0)
                    cfg, run_dir = jobs[name]
                    running[name] = ctx.Process(target=_worker, args=(name, cfg, run_dir, events))
                    running[name].start()
                _collect(events, running, walls, bars)
        finally:
            for proc in running.values():
                if proc.pid is not None:  # started (a failed start leaves no process)
                    proc.terminate()
                    proc.join()
    return walls


def decode_once(configs: list[ExperimentConfig]) -> None:
    """Fill the decode-once cache of every manifest the runs read, once, in this process.

    Left to the runs, each would decode the same images at the same time, each with its own worker processes. A
    manifest that cannot be read is left to its runs, whose errors name them.
    """
    from popevit.data.dataset import split_images  # heavy import: torch
    from popevit.data.manifest import read_manifest  # heavy import: imagehash, scipy

    seen: set[tuple[str, str, str]] = set()
    for cfg in configs:
        data = cfg.data
        key = (str(data.manifest), data.preprocess.model_dump_json(), str(data.cache_dir))
        if data.dataset != "folder" or data.manifest is None or key in seen:
            continue
        seen.add(key)
        try:
            split_images(read_manifest(data.manifest), data.preprocess, data.cache_dir)[0].prepare()
        except (OSError, ValueError):
            continue


def _collect(events: Any, running: dict[str, Any], walls: dict[str, float], bars: dict[str, Any]) -> None:
    """Handle the events of one poll interval; a finished run leaves ``running``, a failed one raises."""
    try:
        name, kind, value = events.get(timeout=_POLL_S)
    except queue_mod.Empty:
        dead = [n for n, p in running.items() if not p.is_alive() and p.exitcode != 0]
        if dead:
            raise RuntimeError(
                f"training {dead[0]} stopped (exit code {running[dead[0]].exitcode}) without a result"
            ) from None
        return
    if kind == "epoch":
        bars[name](int(value))
    elif kind == "error":
        raise RuntimeError(f"training {name} failed: {value}")
    else:
        walls[name] = float(value)
        running.pop(name).join()
