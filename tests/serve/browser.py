"""A headless Chromium for the web-app test: Debian's chromium + chromedriver, driven by Selenium.

The project installs them itself: :func:`ensure_chromium` runs ``apt-get install chromium chromium-driver`` (the
Makefile's ``browser`` target) when they are missing and this process is root; otherwise, or when the install fails,
the test is skipped with the reason. Selenium Manager is never asked to download a browser or driver.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

APT = ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"]
BROWSERS = ("chromium", "chromium-browser")


def _found() -> tuple[str, str] | None:
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def ensure_chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installing them with apt-get when root; ``pytest.skip`` otherwise."""
    found = _found()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium and chromedriver are not installed and this is not root: run `sudo make browser`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run(APT, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:  # stale package lists: update once and retry
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env, timeout=600)
        proc = subprocess.run(APT, capture_output=True, text=True, env=env, timeout=900)
    found = _found()
    if not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        pytest.skip(f"could not install chromium with `{' '.join(APT)}`: {tail[0]}")
    return found


def chromium_driver(download_dir: Path | None = None):
    """A headless Selenium Chrome driver on Debian's chromium, with the network log on (to check offline use)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = ensure_chromium()
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1400,1600",
                "--disable-background-networking", "--no-first-run"):  # fmt: skip
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=opts)
