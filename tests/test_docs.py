"""The findings and experiment pages hold together: links resolve, named configs load, pages keep their shape."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from popevit.config import load_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs" / "experiments").glob("*.md"))
EXPERIMENTS = [p for p in PAGES if p.name != "README.md"]
DOCS = [ROOT / "FINDINGS.md", ROOT / "README.md", ROOT / "BENCHMARKS.md", ROOT / "results" / "README.md", *PAGES]
DOCS += [ROOT / "docs" / "architecture.md"]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_named_configs_resolve(doc):
    text = doc.read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" not in target:
            assert (doc.parent / target).exists(), f"{doc.name} links to missing {target}"
    for cfg in set(re.findall(r"configs/experiments/[\w.]+\.yaml", text)):
        load_config(ROOT / cfg)


@pytest.mark.parametrize("page", EXPERIMENTS, ids=lambda p: p.stem)
def test_an_experiment_page_answers_first_and_keeps_the_fixed_shape(page):
    text = page.read_text()
    assert text.startswith("# ") and "**Question.**" in text and "**Answer.**" in text
    assert text.index("**Answer.**") < text.index("## Setup")
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    wanted = ["Setup", "Commands", "Results", "Paired tests", "Caveats"]
    assert [h for h in headings if h in wanted] == wanted, headings
    assert page.stem in (ROOT / "docs" / "experiments" / "README.md").read_text()


def test_findings_fit_on_a_few_screens_and_its_contents_point_at_its_sections():
    text = (ROOT / "FINDINGS.md").read_text()
    assert len(text.splitlines()) <= 300
    anchors = re.findall(r"^\d+\. \[[^\]]+\]\(#([\w-]+)\)$", text, flags=re.M)
    assert anchors[0] == "does-the-model-find-the-tumour-or-the-source"
    headings = re.findall(r"^## (.+)$", text, flags=re.M)
    sections = {re.sub(r"[^\w\- ]", "", h).strip().lower().replace(" ", "-") for h in headings}
    missing = [a for a in anchors[1:] if a not in sections]
    assert not missing, missing
