from __future__ import annotations

import json
from pathlib import Path

import pytest

from popevit.config import ConfigError, ExperimentConfig, dump_config, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs" / "experiments").glob("*.yaml"))
BASES = sorted((ROOT / "configs" / "base").glob("*.yaml"))
# the values each experiment resolved to when configs/ was one flat file per experiment and encoding (data path aside)
RESOLVED = json.loads((ROOT / "tests" / "fixtures" / "experiment_configs_resolved.json").read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_validate_and_name_registered_models(path):
    from popevit.models import is_vit, list_models, list_pos_encs

    cfg = load_config(path)
    assert cfg.name == path.stem, "a config is named after its file"
    assert cfg.data.data is None and cfg.data.manifest is None, "a shipped config names no data: --data/--manifest do"
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


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        out.update(_flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return out


@pytest.mark.parametrize("entry", RESOLVED, ids=lambda e: " ".join([Path(e["config"]).stem, *e["overrides"]]))
def test_experiment_configs_resolve_to_what_the_flat_files_gave(entry):
    got = _flat(load_config(ROOT / entry["config"], entry["overrides"]).model_dump(mode="json"))
    want = _flat(entry["resolved"])
    diff = {k: (want[k], got.get(k)) for k in want if got.get(k) != want[k]}
    assert not diff, f"{entry['config']} {entry['overrides']} changed (recorded, now): {diff}"


def test_every_shipped_experiment_has_recorded_values_and_every_base_is_used():
    recorded = {Path(e["config"]).name for e in RESOLVED}
    assert recorded == {p.name for p in CONFIGS}
    named = " ".join(p.read_text() for p in [*CONFIGS, *BASES])
    assert [b.name for b in BASES if b.name not in named] == []


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_files_merge_deeply_in_order_under_the_file(tmp_path):
    _write(
        tmp_path / "base" / "a.yaml", "optim: {lr: 1.0e-3, weight_decay: 0.1}\ndata: {augment: {scale: [0.5, 2.0]}}\n"
    )
    _write(tmp_path / "base" / "b.yaml", "base: a.yaml\noptim: {lr: 2.0e-3}\nmodel: {pos_enc: rope_axial}\n")
    _write(tmp_path / "base" / "c.yaml", "model: {pos_enc: sincos, dropout: 0.3}\n")
    exp = _write(
        tmp_path / "exp" / "e.yaml",
        "base: [../base/b.yaml, ../base/c.yaml]\nname: e\ndata: {augment: {scale: [0.8, 1.0]}}\noptim: {lr: 5.0e-4}\n",
    )
    cfg = load_config(exp, ["model.dropout=0.2"])
    assert cfg.optim.lr == pytest.approx(5e-4), "the file overrides its bases"
    assert cfg.optim.weight_decay == pytest.approx(0.1), "keys a file leaves out come from its base's base"
    assert cfg.model.pos_enc == "sincos", "a later base overrides an earlier one"
    assert cfg.model.dropout == pytest.approx(0.2), "--set overrides everything"
    assert cfg.data.augment.scale == (0.8, 1.0), "lists are replaced, not merged"
    assert cfg.data.augment.rotation == pytest.approx(10.0), "defaults fill what no file sets"


def test_the_resolved_config_is_the_merged_one_and_loads_without_its_bases(tmp_path):
    cfg = load_config(ROOT / "configs" / "experiments" / "whole_budget_vit_resstem_noreg.yaml")
    text = dump_config(cfg)
    assert "base" not in {line.split(":")[0] for line in text.splitlines()}
    assert load_config(_write(tmp_path / "elsewhere" / "config.yaml", text)) == cfg
    assert (cfg.model.stem, cfg.optim.schedule_clock, cfg.model.drop_path) == ("res", "time", 0.0)


def test_a_base_cycle_is_refused_with_the_chain(tmp_path):
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"base 'a.yaml' makes a cycle \(.*a.yaml -> .*b.yaml -> .*a.yaml\)"):
        load_config(tmp_path / "a.yaml")
    _write(tmp_path / "self.yaml", "base: self.yaml\n")
    with pytest.raises(ConfigError, match="makes a cycle"):
        load_config(tmp_path / "self.yaml")


def test_a_missing_or_malformed_base_is_explained(tmp_path):
    _write(tmp_path / "e.yaml", "base: ../nope.yaml\n")
    with pytest.raises(ConfigError, match=r"base '../nope.yaml' not found .* relative to the folder"):
        load_config(tmp_path / "e.yaml")
    _write(tmp_path / "n.yaml", "base: {a: 1}\n")
    with pytest.raises(ConfigError, match="base must be a file name or a list"):
        load_config(tmp_path / "n.yaml")
    _write(tmp_path / "list.yaml", "- 1\n")
    _write(tmp_path / "l.yaml", "base: list.yaml\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(tmp_path / "l.yaml")


def test_a_typo_in_a_base_is_reported_like_one_in_the_file(tmp_path):
    _write(tmp_path / "base.yaml", "optim: {weight_decy: 0.1}\n")
    _write(tmp_path / "e.yaml", "base: base.yaml\n")
    with pytest.raises(ConfigError, match=r"unknown key 'optim.weight_decy'; did you mean 'weight_decay'"):
        load_config(tmp_path / "e.yaml")
