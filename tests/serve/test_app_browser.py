"""`popevit serve` in a real headless browser: upload a phantom, see its class and the overlay; upload a corrupt file,
see the error; the model card is one tab away; the page asks nothing of any host but the app's.

Slow: starting the server (Gradio import, the model, the OOD flag) and Chromium took 137 s for the four tests on the
2-core machine under load (`make test-slow`, or `pytest -m slow tests/serve/test_app_browser.py`)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

from .browser import chromium_driver

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tiny_run_template, tmp_path_factory):
    run = Path(shutil.copytree(tiny_run_template, tmp_path_factory.mktemp("served") / "run"))
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    log = open(tmp_path_factory.mktemp("serve-log") / "serve.log", "w+")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen([sys.executable, "-m", "popevit.cli.main", "serve", str(run), "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 240
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            log.seek(0)
            pytest.fail(f"popevit serve did not come up: {log.read()[-2000:]}")
        time.sleep(1)
    yield url, run
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def browser():
    driver = chromium_driver()
    yield driver
    driver.quit()


def _upload(browser, url: str, path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    field = WebDriverWait(browser, 60).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "#popevit-upload input[type=file]"))
    )
    field.send_keys(str(path))


def _wait_text(browser, css: str, predicate, timeout: float = 120) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def check(d):
        text = " ".join(e.text for e in d.find_elements(By.CSS_SELECTOR, css))
        return text if predicate(text) else False

    return WebDriverWait(browser, timeout).until(check)


def test_upload_shows_class_probabilities_and_overlay(app_url, browser, serve_phantoms):
    from selenium.webdriver.common.by import By

    from popevit.serve.predict import Predictor

    url, run = app_url
    image = serve_phantoms / "meningioma" / "meningioma_0004.png"
    expected = Predictor(run, device="cpu").run([image]).records[0]
    _upload(browser, url, image)
    status = _wait_text(browser, "#popevit-status", lambda t: "meningioma_0004.png" in t)
    assert f"{expected['predicted']} ({expected['probability']:.3f})" in status
    assert ("Out of distribution" in status) == expected["ood"]
    label = _wait_text(browser, "#popevit-probabilities", lambda t: expected["predicted"] in t)
    assert all(c in label for c in expected["probabilities"])
    overlay = browser.find_elements(By.CSS_SELECTOR, "#popevit-overlay img")
    shown = browser.find_elements(By.CSS_SELECTOR, "#popevit-input img")
    assert overlay and overlay[0].get_attribute("src") and overlay[0].size["width"] > 50
    assert shown and shown[0].get_attribute("src")
    assert browser.execute_script("return arguments[0].naturalWidth", overlay[0]) > 100  # the PNG really loaded


def test_corrupt_upload_shows_the_error(app_url, browser, tmp_path):
    url, _ = app_url
    bad = tmp_path / "broken_scan.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    _upload(browser, url, bad)
    status = _wait_text(browser, "#popevit-status", lambda t: "broken_scan.png" in t)
    assert "Error" in status and "replace it with an intact copy" in status


def test_model_card_is_one_click_away(app_url, browser):
    from selenium.webdriver.common.by import By

    url, _ = app_url
    browser.get(url)
    tab = next(b for b in _buttons(browser) if b.text.strip() == "Model card")
    tab.click()
    text = _wait_text(browser, "#popevit-card", lambda t: "Intended use" in t, timeout=30)
    assert "not for diagnosis" in text and "Known limitations" in text
    assert browser.find_elements(By.CSS_SELECTOR, "#popevit-card")


def test_the_page_talks_to_no_other_host(app_url, browser):
    """Every request the browser made during these tests went to the app (no CDN, no fonts, no telemetry)."""
    url, _ = app_url
    browser.get(url)
    time.sleep(2)
    hosts = set()
    for entry in browser.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            parsed = urlparse(msg["params"]["request"]["url"])
            if parsed.scheme in ("http", "https", "ws", "wss"):
                hosts.add(parsed.hostname)
    assert hosts and hosts <= {"127.0.0.1", "localhost"}, hosts


def _buttons(browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "button[role=tab]"))
    return browser.find_elements(By.CSS_SELECTOR, "button[role=tab]")
