"""Data location: --data/--manifest, else $POPEVIT_DATA, else one line saying how to point at the Kaggle folder."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from popevit.cli.main import app
from popevit.config import load_config
from popevit.data.location import DATA_ENV, NO_DATA, data_overrides


def test_explicit_data_wins_then_the_environment_then_an_error(tmp_path):
    env = {DATA_ENV: str(tmp_path)}
    assert data_overrides(load_config(None, [f"data.data={tmp_path}"]), env) == []
    assert data_overrides(load_config(None, ["data.manifest=split.csv"]), env) == []
    assert data_overrides(load_config(None, ["data.dataset=cifar10"]), {}) == []  # CIFAR has its own root
    (over,) = data_overrides(load_config(None), env)
    assert load_config(None, [over]).data.data == tmp_path
    odd = tmp_path / "a folder: with [yaml] chars"
    odd.mkdir()
    assert load_config(None, data_overrides(load_config(None), {DATA_ENV: str(odd)})).data.data == odd
    with pytest.raises(ValueError) as err:
        data_overrides(load_config(None), {})
    assert str(err.value) == NO_DATA and "--data /path/to/Training" in NO_DATA and f"export {DATA_ENV}=" in NO_DATA
    with pytest.raises(ValueError, match=f"{DATA_ENV}=.* is not a folder"):
        data_overrides(load_config(None), {DATA_ENV: str(tmp_path / "missing")})


@pytest.mark.parametrize("command", ["train", "sweep", "pretrain"])
def test_a_run_without_data_stops_with_one_line(command, tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    config = tmp_path / "exp.yaml"
    config.write_text(json.dumps({"name": "exp", "model": {"name": "vit_tiny"}}))
    args = [command, "--config", str(config), "--out", str(tmp_path / "out")]
    if command == "sweep":
        args += ["--grid", "optim.lr=1e-3,3e-3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == f"error: {NO_DATA}"
    assert not (tmp_path / "out").exists()
