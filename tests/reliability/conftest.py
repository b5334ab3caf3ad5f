"""Shared inputs of the reliability corpus (a small labelled folder and one tiny trained run) and the checks that
every case must pass: the exit code, no traceback, the message naming the file or option, no user file changed and
no half-made output left."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from tests.reliability.corpus import phantom_folder, snapshot
from typer.testing import CliRunner

TINY = [
    "model.name=vit_tiny",
    "data.preprocess.img_size=32",
    "data.batch_size=8",
    "optim.warmup_epochs=1",
    "train.progress_bar=false",
    "train.threads=1",
    "train.patience=null",
    "train.max_epochs=1",
    "train.limit_train_batches=1",
]
SETS = [a for s in TINY for a in ("--set", s)]


@pytest.fixture(scope="session")
def base_data(tmp_path_factory) -> Path:
    """4 classes x 10 phantoms at 32 px, images only. Read-only: cases copy it (:meth:`Case.data`)."""
    return phantom_folder(tmp_path_factory.mktemp("reliability") / "data")


@pytest.fixture(scope="session")
def tiny_run(base_data, tmp_path_factory) -> Path:
    """A finished run (vit_tiny, one training step) on ``base_data``. Read-only: cases copy it (:meth:`Case.run`)."""
    from popevit.config import load_config
    from popevit.training import train

    out = tmp_path_factory.mktemp("reliability-run") / "run"
    train(load_config(None, [*TINY, f"data.data={base_data}"]), out)
    return out


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    exception: BaseException | None = None


@dataclass
class Case:
    """One case's folder and inputs: copies of the shared data and run, and files made for it."""

    dir: Path
    base: Path
    trained: Path | None
    made: dict[str, Path] = field(default_factory=dict)

    def data(self, name: str = "data") -> Path:
        """A private copy of the labelled folder (made once per name)."""
        if name not in self.made:
            self.made[name] = Path(shutil.copytree(self.base, self.dir / name, symlinks=True))
        return self.made[name]

    def run(self, name: str = "run") -> Path:
        """A private copy of the finished run (made once per name)."""
        assert self.trained is not None, "this family does not train a run"
        if name not in self.made:
            self.made[name] = Path(shutil.copytree(self.trained, self.dir / name, symlinks=True))
        return self.made[name]

    def file(self, name: str, content: bytes | str) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode()
        path.write_bytes(content)
        return path


RUN_RECORDS = ("MODEL_CARD.md", "model_card.json")  # a run's model card: a successful evaluate keeps it up to date


def invoke(args: Sequence[str | os.PathLike[str]], env: dict[str, str] | None = None) -> Outcome:
    """``popevit ARGS`` in this process (the real command group, so the real error handling)."""
    from popevit.cli.main import app

    res = CliRunner().invoke(app, [str(a) for a in args], env=env)
    return Outcome(res.exit_code, res.stdout, res.stderr, res.exception)


def check(
    out: Outcome,
    code: int,
    says: Sequence[str],
    before: dict[str, str],
    after: dict[str, str],
    *,
    may_write: Callable[[str], bool] = lambda p: False,
) -> None:
    """The corpus's invariants for one command.

    Args:
        out: what the command did.
        code: the expected exit code (0, 1 runtime, 2 usage/input, 130, 143).
        says: words stderr must contain (the file or option, the problem).
        before, after: :func:`snapshot` of every input around the command.
        may_write: paths a successful command may create (its outputs). A failing command creates nothing.
    """
    shown = f"exit {out.code}\n--- stderr\n{out.stderr}\n--- stdout\n{out.stdout[-2000:]}"
    if out.exception is not None and not isinstance(out.exception, SystemExit):
        raise AssertionError(f"uncaught {type(out.exception).__name__}: {out.exception}\n{shown}") from out.exception
    assert "Traceback" not in out.stderr + out.stdout, shown
    assert out.code == code, shown
    for word in says:
        assert word in out.stderr, f"stderr does not say {word!r}\n{shown}"
    if code not in (0, 130, 143) and "Usage:" not in out.stderr:  # click's own usage errors have their format
        errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
        assert len(errors) == 1, f"expected one error: line\n{shown}"

    def kept_up_to_date(p: str) -> bool:
        return code == 0 and p.endswith(RUN_RECORDS)

    changed = sorted(p for p, h in before.items() if after.get(p) != h and not kept_up_to_date(p))
    assert not changed, f"user files changed or removed: {changed}\n{shown}"
    new = sorted(p for p in after if p not in before and (code != 0 or not (may_write(p) or kept_up_to_date(p))))
    assert not new, f"{'half-made output' if code else 'unexpected files'} left: {new}\n{shown}"


@pytest.fixture
def case(tmp_path, base_data) -> Case:
    return Case(tmp_path / "case", base_data, None)


@pytest.fixture
def run_case(tmp_path, base_data, tiny_run) -> Case:
    return Case(tmp_path / "case", base_data, tiny_run)


__all__ = ["SETS", "TINY", "Case", "Outcome", "check", "invoke", "snapshot"]
