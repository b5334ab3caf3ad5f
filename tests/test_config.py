from __future__ import annotations

from pathlib import Path

import pytest

from popevit.config import ConfigError, ExperimentConfig, dump_config, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_validate_and_name_registered_models(path):
    from popevit.models import is_vit, list_models, list_pos_encs

    cfg = load_config(path)
    assert cfg.name == path.stem, "a config is named after its file"
    assert cfg.model.name in list_models()
    if is_vit(cfg.model.name):
        assert cfg.model.pos_enc in list_pos_encs()


def test_unknown_key_names_it_and_the_nearest_valid_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 1.0e-3\n  weight_decy: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown key 'optim.weight_decy'; did you mean 'weight_decay'"):
        load_config(p)


def test_wrong_type_names_the_field():
    with pytest.raises(ConfigError, match=r"data.batch_size"):
        load_config(None, ["data.batch_size=lots"])


def test_ema_warmup_without_an_ema_is_explained():
    with pytest.raises(ConfigError, match=r"train.ema_warmup .* train.ema_decay is null; set e.g. 0.99"):
        load_config(None, ["train.ema_warmup=true"])
    assert load_config(None, ["train.ema_warmup=true", "train.ema_decay=0.99"]).train.ema_warmup


def test_a_time_clocked_schedule_without_a_budget_is_explained():
    with pytest.raises(ConfigError, match=r"optim.schedule_clock=time .* train.max_minutes is null; set"):
        load_config(None, ["optim.schedule_clock=time"])
    cfg = load_config(None, ["optim.schedule_clock=time", "train.max_minutes=30"])
    assert cfg.optim.schedule_clock == "time"


def test_a_frozen_backbone_with_a_distillation_head_is_explained():
    with pytest.raises(ConfigError, match=r"distillation head would stay random"):
        load_config(None, ["model.freeze_backbone=true", "model.distill.teacher=runs/teacher"])


def test_overrides_parse_yaml_values_and_round_trip(tmp_path):
    cfg = load_config(None, ["optim.lr=1e-3", "data.classes=[glioma, pituitary]", "model.pos_enc=rope_axial"])
    assert cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.data.classes == ["glioma", "pituitary"]
    p = tmp_path / "resolved.yaml"
    p.write_text(dump_config(cfg))
    assert load_config(p) == cfg


def test_override_without_equals_is_explained():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.lr"])


def test_missing_config_file_is_explained(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_task_definitions_are_exclusive():
    with pytest.raises(ConfigError, match="binary"):
        load_config(None, ["data.binary=true", "data.classes=[glioma]"])
    assert ExperimentConfig().data.ratios == (0.8, 0.1, 0.1)
