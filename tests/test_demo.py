"""``popevit demo``: the whole pipeline on phantoms (tiny settings here; the real size in the slow test)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from popevit.demo import DemoSettings, format_table, run_demo

TINY = DemoSettings(per_class=8, img_size=32, epochs=1, n_boot=200, explain_images=4, models=("pope", "resnet18"))


def test_demo_runs_every_step_and_a_second_run_reuses_them_and_prints_the_same_table(tmp_path):
    lines: list[str] = []
    result = run_demo(tmp_path, TINY, echo=lines.append)
    assert [r.name for r in result.rows] == ["pope", "resnet18"]
    assert [r.model for r in result.rows] == ["vit_p8_w64_d4_conv + pope (res stem, fc_norm)", "resnet18"]
    for r, method in zip(result.rows, ("rollout", "gradcam"), strict=True):
        assert (r.run_dir / "model.safetensors").is_file()
        metrics = json.loads((r.run_dir / "eval" / "test" / "metrics.json").read_text())  # where report looks
        assert metrics["n"] == r.n and metrics["metrics"]["accuracy"]["value"] == r.accuracy[0]
        for value, lo, hi in (r.accuracy, r.auroc_macro):
            assert 0.0 <= lo <= value + 1e-12 and value - 1e-12 <= hi <= 1.0
        faith = json.loads((r.run_dir / "explain" / method / "faithfulness.json").read_text())
        assert faith["mask"]["images"] > 0 and r.pointing == faith["mask"]["methods"][method]["pointing_hit_rate"]
        assert (r.run_dir / "explain" / method / "gallery_confident.png").is_file()
    assert (tmp_path / "compare" / "compare.json").is_file() and result.compare["n"] == result.rows[0].n
    page = result.report.read_text()
    assert result.report == tmp_path / "report.html"
    assert page.index("Answer") < page.index("Explanations") < page.index("Run pope")
    assert "No evaluation found" not in page and "pointing game" in page
    assert "Internal test: test split of phantoms" in page  # the data named, not the run's manifest.csv
    table = format_table(result)
    assert "| vit_p8_w64_d4_conv + pope (res stem, fc_norm) |" in table and "| pope | resnet18 |" in table
    assert [line[:12] for line in lines[:2]] == ["[demo] 1/6 p", "[demo] 2/6 s"]

    lines.clear()
    again = run_demo(tmp_path, TINY, echo=lines.append)
    assert sum("reusing" in line for line in lines) == 2 and not any("1/6" in line for line in lines)
    assert format_table(again) == table


def test_unknown_demo_models_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown demo models \['vit'\]"):
        run_demo(tmp_path, dataclasses.replace(TINY, models=("pope", "vit")))


@pytest.mark.slow
def test_the_demo_learns_every_model_to_90_percent_and_is_deterministic(tmp_path):
    result = run_demo(tmp_path / "a", echo=lambda _: None)
    assert [r.name for r in result.rows] == ["pope", "rope_axial"]
    for r in result.rows:
        assert r.accuracy[0] >= 0.90, format_table(result)
    again = run_demo(tmp_path / "b", echo=lambda _: None)  # trained again from scratch in another folder
    assert format_table(again) == format_table(result)


def test_demo_overrides_come_after_the_demos_own(tmp_path):
    from popevit.demo import DEMO_MODELS, demo_config

    s = dataclasses.replace(TINY, overrides=("model.stem=conv", "optim.warmup_epochs=3"))
    cfg = demo_config(tmp_path / "split.csv", DEMO_MODELS[0], s, tmp_path / "cache")
    assert (cfg.model.stem, cfg.optim.warmup_epochs, cfg.model.pos_enc) == ("conv", 3, "pope")
