"""The model card: every evaluation with its CIs, internal and external apart, probes, limitations; kept by
`popevit evaluate` and `popevit train`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from popevit.evaluation.evaluate import evaluate_run
from popevit.serve.card import CARD_JSON, CARD_MD, build_card, write_model_card


def _external_metrics(run: Path, internal: dict) -> None:
    """An evaluation on another source, as cross-dataset evaluation writes it (source.external, source.name)."""
    ext = json.loads(json.dumps(internal))
    ext["source"] = {"data": "/data/br35h", "split": None, "external": True, "name": "br35h"}
    ext["label_map"] = {"yes": "tumor", "no": "notumor"}
    ext["n"] = 3000
    ext["metrics"]["accuracy"] = {"value": 0.612, "lo": 0.595, "hi": 0.63}
    (run / "eval" / "data-br35h").mkdir(parents=True)
    (run / "eval" / "data-br35h" / "metrics.json").write_text(json.dumps(ext))


def test_card_lists_internal_and_external_evaluations_probes_and_limitations(tiny_run):
    res = evaluate_run(tiny_run, n_boot=50, plots=False, device="cpu", dedup_against=tiny_run / "manifest.csv")
    assert (tiny_run / CARD_MD).is_file()  # evaluate refreshed the card itself
    internal = json.loads((Path(res["out"]) / "metrics.json").read_text())
    _external_metrics(tiny_run, internal)
    (tiny_run / "audit.json").write_text(json.dumps({
        "probes": {"image size and mode": {"accuracy": 0.81, "chance": 0.28}},
        "shortcut_raw": 0.805, "shortcut_preprocessed": 0.41, "majority": 0.279,
    }))  # fmt: skip
    write_model_card(tiny_run, strict=True)
    md = (tiny_run / CARD_MD).read_text()
    card = json.loads((tiny_run / CARD_JSON).read_text())

    assert "research tool, not a medical device: it is not for diagnosis" in md
    assert card["intended_use"]["research_only"] is True
    assert "- architecture: `vit_tiny`" in md and "- positional encoding: `rope_axial`" in md
    assert card["model"]["parameters"] > 10_000
    assert card["training_data"]["counts"]["train"] == {"glioma": 20, "meningioma": 20, "notumor": 20, "pituitary": 20}
    assert card["training_data"]["manifest_sha256"] and card["training_data"]["split_fingerprint"]

    internal_md = md.split("### Internal evaluation")[1].split("### External validation")[0]
    external_md = md.split("### External validation")[1].split("## ")[0]
    acc = internal["metrics"]["accuracy"]
    assert f"{acc['value']:.3f} [{acc['lo']:.3f}, {acc['hi']:.3f}]" in internal_md
    assert "| test | the run's manifest (test) | 40 |" in internal_md
    assert "no duplicate in training" in internal_md  # the de-duplicated subset
    assert "br35h" not in internal_md
    assert "| data-br35h | br35h | 3000 | 0.612 [0.595, 0.630] |" in external_md
    assert '{"yes": "tumor", "no": "notumor"}' in external_md
    assert [e["tag"] for e in card["evaluations"] if e["external"]] == ["data-br35h"]
    ece = card["evaluations"][1]["metrics"]["ece"]
    assert set(ece) == {"value", "lo", "hi"}

    assert "| image size and mode | 0.810 | 0.280 |" in md
    assert "| metadata of the raw files | 0.805 | 0.279 |" in md
    limitations = md.split("## Known limitations")[1]
    assert "source (Br35H) than the tumour classes" in limitations and "see External validation (br35h)" in limitations
    assert "## Out-of-distribution flag" in md and "energy >" in md  # the fitted flag is described


def test_card_without_audit_or_evaluations_says_how_to_get_them(tiny_run):
    card = build_card(tiny_run)
    assert card["shortcut_probes"] == {
        "attached": False,
        "how": f"popevit data audit --train {tiny_run / 'manifest.csv'} --json {tiny_run / 'audit.json'}",
    }
    write_model_card(tiny_run, strict=True)
    md = (tiny_run / CARD_MD).read_text()
    assert "No data audit is attached. Make one with `popevit data audit --train" in md
    assert "None yet: `popevit evaluate RUN`." in md and "no external validation is attached yet" in md


def test_a_card_problem_never_fails_the_caller(tmp_path, capsys):
    assert write_model_card(tmp_path / "not-a-run") is None
    assert "warning: the model card of" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        write_model_card(tmp_path / "not-a-run", strict=True)


def test_train_writes_the_card(phantom_root, tmp_path):
    from popevit.config import load_config
    from popevit.training import train

    sets = ["model.name=vit_tiny", "data.preprocess.img_size=32", "data.batch_size=16", "train.max_epochs=1",
            "train.progress_bar=false", "train.threads=1", "train.patience=null",
            f"data.data={phantom_root}"]  # fmt: skip
    run = train(load_config(None, sets), tmp_path / "run").out_dir
    card = json.loads((run / CARD_JSON).read_text())
    assert card["training"]["epochs"] == 1 and card["model"]["name"] == "vit_tiny"
    assert "## Training data" in (run / CARD_MD).read_text()
