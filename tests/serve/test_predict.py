"""`popevit predict`: the evaluation's preprocessing and model, the calibrated temperature, overlays, volumes, and
one clear line for every input or model it cannot use."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from popevit.cli.main import app
from popevit.evaluation.calibration import apply_temperature
from popevit.evaluation.evaluate import evaluate_run
from popevit.evaluation.predictions import Predictions
from popevit.serve.predict import Predictor, predict

from .conftest import CLASSES, phantom_gray, radiological_to_ras, write_nifti


def _cli(*args: str):
    return CliRunner().invoke(app, ["predict", *map(str, args)])


def _proba(records: list[dict]) -> np.ndarray:
    return np.array([[r["probabilities"][c] for c in CLASSES] for r in records])


def test_predictions_are_the_evaluation_predictions(tiny_run, serve_manifest):
    """Same files, same preprocessing, same model: predict and evaluate agree to float precision."""
    res = evaluate_run(tiny_run, n_boot=20, plots=False, device="cpu")
    ev = Predictions.load(Path(res["out"]) / "predictions.csv")
    got = Predictor(tiny_run, device="cpu").run(ev.paths, batch_size=7)
    assert [r["path"] for r in got.records] == ev.paths
    np.testing.assert_allclose(_proba(got.records), ev.proba, atol=1e-6)


def test_calibrated_temperature_is_used_and_named(tiny_run):
    plain = Predictor(tiny_run, device="cpu")
    assert plain.info.temperature is None and "--calibrate" in plain.info.temperature_source
    res = evaluate_run(tiny_run, n_boot=20, plots=False, device="cpu", calibrate=True)
    t = res["calibration"]["temperature"]
    files = sorted(Predictions.load(Path(res["out"]) / "predictions.csv").paths)[:6]
    scaled = Predictor(tiny_run, device="cpu")
    assert scaled.info.temperature == pytest.approx(t) and "eval/test-ts/metrics.json" in scaled.info.temperature_source
    a = _proba(plain.run(files).records)
    b = _proba(scaled.run(files).records)
    np.testing.assert_allclose(b, apply_temperature(a, t), atol=1e-6)
    # a temperature at its search bound is not identified: not used, and said so
    metrics_path = tiny_run / "eval" / "test-ts" / "metrics.json"
    m = json.loads(metrics_path.read_text())
    m["calibration"]["at_bound"] = True
    metrics_path.write_text(json.dumps(m))
    bound = Predictor(tiny_run, device="cpu")
    assert bound.info.temperature is None and "search bound" in bound.info.temperature_source


def test_cli_folder_with_a_bad_file_predicts_the_rest(tiny_run, serve_phantoms, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for p in sorted((serve_phantoms / "glioma").glob("*.png"))[:5]:
        Image.open(p).save(scans / p.name)
    (scans / "broken.png").write_bytes((scans / "glioma_0000.png").read_bytes()[:100])
    (scans / "notes.txt").write_text("pt 12")
    out = tmp_path / "out"
    cli = _cli(tiny_run, scans, "--out", out)
    assert cli.exit_code == 2, cli.output
    assert "Traceback" not in cli.output
    assert f"error: {scans / 'broken.png'}: truncated or corrupt image data" in cli.output
    assert "1 inputs could not be read; 5 slices predicted" in cli.output
    for c in CLASSES:
        assert c in cli.output.splitlines()[0]  # the table's header names every class
    rows = list(csv.DictReader((out / "predictions.csv").read_text().splitlines()))
    assert [Path(r["path"]).name for r in rows] == [f"glioma_000{i}.png" for i in range(5)]
    assert {k for k in rows[0]} >= {"predicted", "probability", "ood", "flagged_by", *[f"p_{c}" for c in CLASSES]}
    saved = json.loads((out / "predictions.json").read_text())
    assert saved["n_predicted"] == 5 and saved["n_failed"] == 1
    assert saved["failed"][0]["path"] == str(scans / "broken.png")
    assert saved["skipped"] == [{"path": str(scans / "notes.txt"), "reason": "not an image, DICOM or NIfTI file"}]
    assert saved["ood"]["thresholds"].keys() == {"energy", "input", "contrast"}
    assert saved["temperature"]["value"] is None
    for r in saved["predictions"]:
        assert sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-6)
    # nothing already written is lost: a second run into the same folder is refused
    before = (out / "predictions.csv").read_bytes()
    again = _cli(tiny_run, scans, "--out", out)
    assert again.exit_code == 2 and "already exists" in again.output
    assert (out / "predictions.csv").read_bytes() == before
    assert _cli(tiny_run, scans / "glioma_0001.png", "--out", out, "--overwrite").exit_code == 0


def test_explain_writes_an_overlay_per_slice(tiny_run, serve_phantoms, tmp_path):
    images = sorted((serve_phantoms / "pituitary").glob("*.png"))[:3]
    for method in ("rollout", "gradcam"):
        result = predict(tiny_run, images, out=tmp_path / method, explain=method, device="cpu")
        paths = [Path(r["explanation"]) for r in result.records]
        assert [p.parent for p in paths] == [tmp_path / method / "explain" / method] * 3
        for p in paths:
            with Image.open(p) as im:
                assert im.format == "PNG" and im.size[0] > 2 * im.size[1]  # original | input | overlay


def test_tta_averages_the_flip(tiny_run, serve_phantoms):
    from popevit.data.preprocess import preprocess_image

    path = serve_phantoms / "glioma" / "glioma_0005.png"
    plain = Predictor(tiny_run, device="cpu")
    tta = Predictor(tiny_run, device="cpu", tta=True)
    pre = preprocess_image(Image.open(path), plain.info.preprocess)
    flipped = plain.predict_arrays(np.ascontiguousarray(pre[None, :, ::-1]))["proba"]
    expected = 0.5 * (plain.predict_arrays(pre[None])["proba"] + flipped)
    np.testing.assert_allclose(_proba(tta.run([path]).records), expected, atol=1e-6)


def test_nifti_volume_gets_a_summary(tiny_run, serve_phantoms, tmp_path):
    views = [phantom_gray(p).astype(np.float32) for p in sorted((serve_phantoms / "meningioma").glob("*.png"))[:5]]
    vol = write_nifti(tmp_path / "head.nii.gz", np.stack([radiological_to_ras(v) for v in views], axis=-1))
    out = tmp_path / "out"
    cli = _cli(tiny_run, vol, "--out", out)
    assert cli.exit_code == 0, cli.output
    assert f"volume {vol}: 5 of 5 slices" in cli.output
    saved = json.loads((out / "predictions.json").read_text())
    (summary,) = saved["volumes"]
    assert summary["n_predicted"] == 5 and set(summary["max_per_class"]) == set(CLASSES)
    best = summary["most_confident_tumour_slice"]
    tumour_p = [max(r["probabilities"][c] for c in CLASSES if c != "notumor") for r in saved["predictions"]]
    trusted = [p for p, r in zip(tumour_p, saved["predictions"], strict=True) if not r["ood"]] or tumour_p
    assert best["probability"] == pytest.approx(max(trusted)) and best["class"] != "notumor"
    for c in CLASSES:
        assert summary["max_per_class"][c]["probability"] == pytest.approx(
            max(r["probabilities"][c] for r in saved["predictions"])
        )
    middle = _cli(tiny_run, vol, "--out", tmp_path / "mid", "--slices", "middle")
    assert (
        middle.exit_code == 0
        and json.loads((tmp_path / "mid" / "predictions.json").read_text())["predictions"][0]["index"] == 2
    )


def test_run_without_weights_is_one_line(tiny_run, serve_phantoms, tmp_path):
    (tiny_run / "model.safetensors").unlink()
    cli = _cli(tiny_run, serve_phantoms / "glioma" / "glioma_0000.png", "--out", tmp_path / "o")
    assert cli.exit_code == 2 and "Traceback" not in cli.output
    assert f"error: {tiny_run} has no weights" in cli.output and "--resume" in cli.output
    assert not (tmp_path / "o").exists()


def test_onnx_from_another_tool_and_corrupt_onnx_are_one_line(serve_phantoms, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "other",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 32, 32])],
    )  # fmt: skip
    other = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(other))
    image = serve_phantoms / "glioma" / "glioma_0000.png"
    cli = _cli(other, image, "--out", tmp_path / "o")
    assert cli.exit_code == 2 and "Traceback" not in cli.output
    assert "has no popevit metadata" in cli.output and "popevit export RUN --format onnx" in cli.output
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x08\x07garbage" * 10)
    cli = _cli(junk, image, "--out", tmp_path / "o")
    assert cli.exit_code == 2 and "is not a readable ONNX model" in cli.output and "Traceback" not in cli.output
    cli = _cli(tmp_path / "model.h5", image)
    assert cli.exit_code == 2 and "not found" in cli.output


def test_bad_options_are_refused_before_any_work(tiny_run, serve_phantoms, tmp_path):
    image = serve_phantoms / "glioma" / "glioma_0000.png"
    cli = _cli(tiny_run, image, "--out", tmp_path / "o", "--slices", "half")
    assert cli.exit_code == 2 and "--slices 'half' is not understood" in cli.output
    cli = _cli(tiny_run, image, "--out", tmp_path / "o", "--explain", "rolout")
    assert cli.exit_code == 2 and "did you mean 'rollout'" in cli.output
    assert not (tmp_path / "o").exists()


def test_all_inputs_unreadable_still_writes_the_record(tiny_run, tmp_path):
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    cli = _cli(tiny_run, empty, tmp_path / "missing.dcm", "--out", tmp_path / "o")
    assert cli.exit_code == 2 and "2 inputs could not be read; 0 slices predicted" in cli.output
    saved = json.loads((tmp_path / "o" / "predictions.json").read_text())
    assert [f["reason"] for f in saved["failed"]] == [
        "empty file (0 bytes); replace it with an intact copy of the image",
        "not found; check the path",
    ]
