"""Every command the README shows exists: each ``popevit ...`` line names a real (sub)command with real options,
and the quickstart's make targets exist. (Running them end to end is what `make demo` and the other tests do.)"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from popevit.cli.main import app

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
LINES = [ln.split("#")[0].strip() for block in BLOCKS for ln in block.splitlines()]
POPEVIT = [ln for ln in LINES if ln.startswith("popevit ")]


def _command_path(argv: list[str]) -> list[str]:
    """Leading words that are (sub)command names, e.g. ``['data', 'split']``."""
    path = []
    for word in argv:
        if word.startswith("-") or "/" in word or "$" in word or "." in word:
            break
        path.append(word)
    return path[:2] if path and path[0] == "data" else path[:1]


def test_readme_quickstart_is_exactly_make_demo_and_make_test():
    quick = README.split("## Quickstart", 1)[1].split("##", 1)[0]
    commands = [ln.split("#")[0].strip() for ln in re.findall(r"```bash\n(.*?)```", quick, flags=re.S)[0].splitlines()]
    assert [c for c in commands if c] == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, flags=re.M) and re.search(r"^test:", makefile, flags=re.M)


@pytest.mark.parametrize("line", POPEVIT)
def test_readme_popevit_commands_exist_with_their_options(line):
    argv = shlex.split(line)[1:]
    path = _command_path(argv)
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, f"`popevit {' '.join(path)}` does not exist: {result.output}"
    for opt in (a.split("=")[0] for a in argv if a.startswith("--")):
        assert opt in result.output, f"README uses {opt} but `popevit {' '.join(path)} --help` does not list it"


def test_readme_configs_exist_and_load():
    from popevit.config import load_config

    named = re.findall(r"configs/[\w./]+\.yaml", README)
    assert named, "the README names no config"
    for cfg in named:
        assert (ROOT / cfg).is_file(), cfg
        load_config(ROOT / cfg)
