"""Source-confound audit: acquisition clusters, the class x cluster warning and the probes that must stay at chance."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from popevit.data.confound import confound_report, file_traits, format_confound, read_traits
from popevit.data.discover import discover


@pytest.fixture(scope="module")
def confounded_root(phantom_root, tmp_path_factory) -> Path:
    """The phantoms with every notumor image re-saved the way another source would: 225 px RGB JPEG on a frame."""
    root = tmp_path_factory.mktemp("confounded")
    for cls_dir in sorted(p for p in phantom_root.iterdir() if p.is_dir() and p.name != "masks"):
        (root / cls_dir.name).mkdir()
        for f in sorted(cls_dir.glob("*.png")):
            if cls_dir.name != "notumor":
                shutil.copy(f, root / cls_dir.name / f.name)
                continue
            img = Image.open(f).convert("RGB").resize((205, 205))
            framed = Image.new("RGB", (225, 225), (40, 40, 40))
            framed.paste(img, (10, 10))
            framed.save(root / "notumor" / f"{f.stem}.jpg", quality=60)
    return root


def _report(root: Path) -> dict:
    disc = discover(root)
    traits, bad = read_traits([s.path for s in disc.samples], workers=1)
    assert not bad
    label = {s.path: s.label for s in disc.samples}
    return confound_report(traits, [label[t.path] for t in traits], permutations=100)


def test_traits_see_what_a_file_betrays(confounded_root):
    t = file_traits(next((confounded_root / "notumor").glob("*.jpg")))
    assert (t.width, t.height, t.mode, t.format) == (225, 225, "RGB", "JPEG") and t.quant
    assert len(t.hist) == 32 and abs(sum(t.hist) - 1) < 1e-6 and len(t.masked) == 256
    png = file_traits(next((confounded_root / "glioma").glob("*.png")))
    assert png.quant == "" and png.format == "PNG"


def test_phantoms_are_not_confounded(phantom_root):
    r = _report(phantom_root)
    assert r["confounded"] == [] and "no class lives in clusters of its own" in format_confound(r)
    assert sum(c["n"] for c in r["clusters"]) == r["n"] == 48


def test_a_class_from_its_own_source_is_flagged(confounded_root):
    r = _report(confounded_root)
    assert [f["class"] for f in r["confounded"]] == ["notumor"]
    assert r["own_share"]["notumor"] == 1.0 and r["null_p99"]["notumor"] < 0.5
    assert "WARNING: class 'notumor' lives almost only in its own acquisition clusters" in format_confound(r)


def test_audit_cli_reports_clusters_and_probes(confounded_root, phantom_root, tmp_path):
    from typer.testing import CliRunner

    from popevit.cli.main import app

    out = tmp_path / "audit.json"
    result = CliRunner().invoke(app, ["data", "audit", "--train", str(confounded_root), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "WARNING: class 'notumor'" in result.output and "image with the head masked out" in result.output
    report = json.loads(out.read_text())
    probes = report["probes"]
    assert set(probes) >= {"histogram", "masked_head", "metadata_raw"}
    clean = CliRunner().invoke(app, ["data", "audit", "--train", str(phantom_root), "--json", str(tmp_path / "p.json")])
    assert clean.exit_code == 0 and "WARNING" not in clean.output and "SHORTCUT" not in clean.output, clean.output
    # file metadata singles out the re-saved class (at most 0.25 + 0.75 / 3 = 0.5 with the other three mixed)
    clean_probes = json.loads((tmp_path / "p.json").read_text())["probes"]
    assert probes["metadata_raw"]["accuracy"] >= 0.4 > clean_probes["metadata_raw"]["accuracy"]


def test_inspect_shows_the_cluster_table(confounded_root):
    from popevit.data.inspection import format_report, inspect_data

    r = inspect_data(confounded_root, near_threshold=None)
    assert r["source_confound"]["confounded"][0]["class"] == "notumor"
    assert "acquisition clusters" in format_report(r)


def test_confound_report_refuses_mismatched_inputs(phantom_root):
    disc = discover(phantom_root)
    traits, _ = read_traits([s.path for s in disc.samples[:10]], workers=1)
    with pytest.raises(ValueError, match="must pair up"):
        confound_report(traits, ["glioma"] * 9)
    assert np.isfinite(confound_report(traits, [s.label for s in disc.samples[:10]])["purity"])
