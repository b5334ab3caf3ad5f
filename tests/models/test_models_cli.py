"""``popevit models`` prints every registered model and PE with parameter counts."""

from __future__ import annotations

import re

import typer
from typer.testing import CliRunner

from popevit.cli.models import models
from popevit.models import create_model, list_models, list_pos_encs


def test_models_table_lists_everything_with_counts() -> None:
    app = typer.Typer()
    app.command()(models)
    result = CliRunner().invoke(app, ["--preset", "vit_p8_w32_d2"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    for name in list_models() + list_pos_encs():
        assert any(line.split()[:1] == [name] for line in lines), name
    pope = next(line for line in lines if line.startswith("pope "))
    total, pe = (int(v.replace(",", "")) for v in re.findall(r"[\d,]{2,}", pope)[:2])
    model = create_model("vit_p8_w32_d2", num_classes=4, img_size=32, pos_enc="pope")
    assert total == sum(p.numel() for p in model.parameters())
    assert pe == model.pos_enc.delta.numel() == 2 * 2 * 16  # depth x heads x head dim
    assert "pos_enc.delta" in pope and "2x D" in pope


def test_models_rejects_a_baseline_as_preset() -> None:
    app = typer.Typer()
    app.command()(models)
    result = CliRunner().invoke(app, ["--preset", "resnet18"])
    assert result.exit_code != 0 and "not a ViT preset" in result.output
